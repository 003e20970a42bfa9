#include "core/metrics.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/queue.h"

#define NBUCKETS 14
static const double bucket_bounds[NBUCKETS] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                               0.025,  0.05,    0.1,    0.25,  0.5,    1.0,   10.0};

typedef enum { KIND_COUNTER, KIND_GAUGE_FN, KIND_HISTOGRAM, KIND_COUNTER_FN } kind_t;

struct tms_counter {
    _Atomic uint64_t value;
};

struct tms_histogram {
    _Atomic uint64_t buckets[NBUCKETS + 1]; /* last is +Inf */
    _Atomic uint64_t count;
    _Atomic uint64_t sum_ns;
};

typedef struct series {
    struct series *next;
    kind_t kind;
    char *name, *help, *labels;
    char *owner; /* gauges: the thread label it was registered under, or NULL */
    union {
        struct tms_counter counter;
        struct tms_histogram hist;
        struct {
            double (*fn)(void *);
            void *arg;
        } gauge;
    } u;
} series_t;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static series_t *head, *tail;
/* Appended to the labels of gauges registered from this thread (a worker's loop). */
static __thread char thread_label[64];

static series_t *find_or_add(kind_t kind, const char *name, const char *help, const char *labels)
{
    series_t *s;
    pthread_mutex_lock(&lock);
    for (s = head; s; s = s->next) {
        if (s->kind == kind && strcmp(s->name, name) == 0 && strcmp(s->labels, labels) == 0)
            goto out;
    }
    s = tms_new(series_t);
    s->kind = kind;
    s->name = tms_strdup(name);
    s->help = tms_strdup(help);
    s->labels = tms_strdup(labels);
    /* Appending keeps series of one name together when registered together. */
    TMS_FIFO_APPEND(head, tail, s, next);
out:
    pthread_mutex_unlock(&lock);
    return s;
}

tms_counter_t *tms_metrics_counter(const char *name, const char *help, const char *labels)
{
    return &find_or_add(KIND_COUNTER, name, help, labels ? labels : "")->u.counter;
}

void tms_counter_add(tms_counter_t *c, uint64_t n)
{
    atomic_fetch_add_explicit(&c->value, n, memory_order_relaxed);
}

uint64_t tms_counter_value(const tms_counter_t *c)
{
    return atomic_load_explicit(&((tms_counter_t *)c)->value, memory_order_relaxed);
}

tms_histogram_t *tms_metrics_histogram(const char *name, const char *help, const char *labels)
{
    return &find_or_add(KIND_HISTOGRAM, name, help, labels ? labels : "")->u.hist;
}

void tms_histogram_observe(tms_histogram_t *h, double seconds)
{
    int i = 0;
    if (seconds < 0)
        seconds = 0;
    while (i < NBUCKETS && seconds > bucket_bounds[i])
        i++;
    atomic_fetch_add_explicit(&h->buckets[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_ns, (uint64_t)(seconds * 1e9), memory_order_relaxed);
}

static void register_fn(kind_t kind, const char *name, const char *help, const char *labels,
                        double (*fn)(void *arg), void *arg);

void tms_metrics_gauge_fn(const char *name, const char *help, const char *labels,
                          double (*fn)(void *arg), void *arg)
{
    register_fn(KIND_GAUGE_FN, name, help, labels, fn, arg);
}

void tms_metrics_counter_fn(const char *name, const char *help, const char *labels,
                            double (*fn)(void *arg), void *arg)
{
    register_fn(KIND_COUNTER_FN, name, help, labels, fn, arg);
}

static void register_fn(kind_t kind, const char *name, const char *help, const char *labels,
                        double (*fn)(void *arg), void *arg)
{
    char all[512];
    series_t *s;
    if (!labels)
        labels = "";
    if (thread_label[0]) {
        snprintf(all, sizeof(all), "%s%s%s", labels, labels[0] ? "," : "", thread_label);
        labels = all;
    }
    s = find_or_add(kind, name, help, labels);
    pthread_mutex_lock(&lock);
    s->u.gauge.fn = fn;
    s->u.gauge.arg = arg;
    if (thread_label[0] && !s->owner)
        s->owner = tms_strdup(thread_label);
    pthread_mutex_unlock(&lock);
}

void tms_metrics_thread_label(const char *label)
{
    snprintf(thread_label, sizeof(thread_label), "%s", label ? label : "");
}

/* Unregister the gauges for which drop(s, key) holds (under the lock, so a scrape in
 * progress finishes first). */
static void drop_gauges(int (*drop)(const series_t *s, const void *key), const void *key)
{
    series_t **p, *s, *prev = NULL;
    pthread_mutex_lock(&lock);
    for (p = &head; (s = *p) != NULL;) {
        if ((s->kind == KIND_GAUGE_FN || s->kind == KIND_COUNTER_FN) && drop(s, key)) {
            *p = s->next;
            if (tail == s)
                tail = prev;
            free(s->name);
            free(s->help);
            free(s->labels);
            free(s->owner);
            free(s);
            continue;
        }
        prev = s;
        p = &s->next;
    }
    pthread_mutex_unlock(&lock);
}

static int owned_by(const series_t *s, const void *label)
{
    return s->owner && strcmp(s->owner, label) == 0;
}

static int reads(const series_t *s, const void *arg)
{
    return s->u.gauge.arg == arg;
}

void tms_metrics_drop_thread_gauges(void)
{
    if (thread_label[0])
        drop_gauges(owned_by, thread_label);
}

void tms_metrics_drop_gauges_of(const void *arg)
{
    drop_gauges(reads, arg);
}

typedef struct {
    char *buf;
    size_t len, cap;
} sbuf_t;

static void sb_printf(sbuf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf_t *b, const char *fmt, ...)
{
    va_list ap;
    for (;;) {
        int n;
        va_start(ap, fmt);
        n = vsnprintf(b->buf + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n >= 0 && (size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        b->cap = b->cap * 2 + (size_t)(n > 0 ? n : 0);
        b->buf = tms_realloc(b->buf, b->cap);
    }
}

static const char *type_name(kind_t k)
{
    return k == KIND_COUNTER || k == KIND_COUNTER_FN ? "counter"
           : k == KIND_HISTOGRAM                     ? "histogram"
                                                     : "gauge";
}

char *tms_metrics_render(size_t *len)
{
    sbuf_t b = {tms_malloc(4096), 0, 4096};
    series_t *s, *t;
    b.buf[0] = '\0';
    pthread_mutex_lock(&lock);
    /* Prometheus wants all series of one name grouped under one HELP/TYPE; emit
     * each name once, at its first series, with every series of that name. */
    for (s = head; s; s = s->next) {
        int seen = 0;
        for (t = head; t != s; t = t->next) {
            if (strcmp(t->name, s->name) == 0) {
                seen = 1;
                break;
            }
        }
        if (seen)
            continue;
        sb_printf(&b, "# HELP %s %s\n# TYPE %s %s\n", s->name, s->help, s->name,
                  type_name(s->kind));
        for (t = s; t; t = t->next) {
            const char *l = t->labels;
            if (strcmp(t->name, s->name) != 0)
                continue;
            if (t->kind == KIND_COUNTER) {
                sb_printf(&b, "%s%s%s%s %llu\n", t->name, *l ? "{" : "", l, *l ? "}" : "",
                          (unsigned long long)tms_counter_value(&t->u.counter));
            } else if (t->kind == KIND_GAUGE_FN || t->kind == KIND_COUNTER_FN) {
                double v = t->u.gauge.fn ? t->u.gauge.fn(t->u.gauge.arg) : 0;
                sb_printf(&b, "%s%s%s%s %.17g\n", t->name, *l ? "{" : "", l, *l ? "}" : "", v);
            } else {
                uint64_t cum = 0;
                for (int i = 0; i <= NBUCKETS; i++) {
                    cum += atomic_load(&t->u.hist.buckets[i]);
                    if (i < NBUCKETS)
                        sb_printf(&b, "%s_bucket{%s%sle=\"%g\"} %llu\n", t->name, l, *l ? "," : "",
                                  bucket_bounds[i], (unsigned long long)cum);
                    else
                        sb_printf(&b, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", t->name, l,
                                  *l ? "," : "", (unsigned long long)cum);
                }
                sb_printf(&b, "%s_sum%s%s%s %.9f\n", t->name, *l ? "{" : "", l, *l ? "}" : "",
                          (double)atomic_load(&t->u.hist.sum_ns) / 1e9);
                sb_printf(&b, "%s_count%s%s%s %llu\n", t->name, *l ? "{" : "", l, *l ? "}" : "",
                          (unsigned long long)atomic_load(&t->u.hist.count));
            }
        }
    }
    pthread_mutex_unlock(&lock);
    *len = b.len;
    return b.buf;
}

void tms_metrics_reset(void)
{
    series_t *s, *next;
    pthread_mutex_lock(&lock);
    for (s = head; s; s = next) {
        next = s->next;
        free(s->name);
        free(s->help);
        free(s->labels);
        free(s->owner);
        free(s);
    }
    head = tail = NULL;
    pthread_mutex_unlock(&lock);
}
