#define _GNU_SOURCE /* pthread_setname_np */
#include "core/log.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/metrics.h"
#include "core/status.h"

static atomic_int min_level = TMS_LOG_INFO;
static const char *const level_names[] = {"debug", "info", "warn", "error"};
static const unsigned char level_lens[] = {5, 4, 4, 5};

/* How long the log thread gathers lines after a write before the next one: the cost
 * of a busy server's log is then one write per this interval, not one per line. 10 ms,
 * not 2: the thread shares the loop's core, and its 500 wake-ups a second under a GET
 * load were half of the GET's context switches (bench/cost, 5 x 100,000 GETs, two runs
 * in each order: 9.61 / 8.45 and 7.79 / 7.60 us per GET, switches 0.010-0.012 / 0.004-
 * 0.006). A line reaches the log at most this much later. */
#define BATCH_NS (10 * 1000 * 1000)

void tms_log_set_level(tms_log_level_t level)
{
    atomic_store(&min_level, (int)level);
}

bool tms_log_enabled(tms_log_level_t level)
{
    return (int)level >= atomic_load_explicit(&min_level, memory_order_relaxed);
}

int tms_log_parse_level(const char *s, tms_log_level_t *out)
{
    for (int i = 0; i < 4; i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (tms_log_level_t)i;
            return 0;
        }
    }
    return -TMS_EINVAL;
}

/* ---- the sink ------------------------------------------------------------------ */

/* Writes everything to stderr, waiting while a non-blocking descriptor is full. A
 * broken sink loses the bytes: there is nowhere to say so. */
static void write_all(const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(STDERR_FILENO, p, n);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd pfd = {.fd = STDERR_FILENO, .events = POLLOUT};
            poll(&pfd, 1, 1000);
        } else {
            return;
        }
    }
}

/* The buffered writer: lines are appended to `fill` under the lock; the log thread
 * swaps it with `spare` and writes that out without the lock. */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    pthread_t thread;
    char *fill, *spare;
    size_t len;
    bool running; /* the thread takes lines */
    bool idle;    /* the thread waits for a first line: the next append wakes it */
    bool stop;
} w = {.lock = PTHREAD_MUTEX_INITIALIZER};
static atomic_bool buffered;
static atomic_uint_least64_t dropped;

#define DROPPED_NAME "tms_log_dropped_total"
#define DROPPED_HELP                                                                               \
    "log lines dropped because the log buffer was full (the log sink did not keep up)"

/* Rare (the sink is stuck): the counter is looked up each time, so that it survives
 * tms_metrics_reset. */
static void count_drop(uint64_t lines)
{
    atomic_fetch_add_explicit(&dropped, lines, memory_order_relaxed);
    tms_counter_add(tms_metrics_counter(DROPPED_NAME, DROPPED_HELP, ""), (double)lines);
}

/* Appends lines (whole ones, `lines` of them) to the shared buffer. */
static void emit_shared(const char *line, size_t n, uint64_t lines)
{
    if (!atomic_load_explicit(&buffered, memory_order_acquire)) {
        write_all(line, n);
        return;
    }
    pthread_mutex_lock(&w.lock);
    if (!w.running) {
        pthread_mutex_unlock(&w.lock);
        write_all(line, n);
        return;
    }
    if (w.len + n > TMS_LOG_BUFFER_BYTES) {
        pthread_mutex_unlock(&w.lock);
        count_drop(lines);
        return;
    }
    memcpy(w.fill + w.len, line, n);
    w.len += n;
    if (w.idle) {
        w.idle = false;
        pthread_cond_signal(&w.cond);
    }
    pthread_mutex_unlock(&w.lock);
}

/* A loop thread's lines are gathered in a buffer of its own and appended to the
 * shared one once per loop iteration (tms_log_stage_flush from a uv_prepare), so a
 * request's access-log line costs no lock (the lock and unlock per line were 1.5 % of
 * a GET; issue 19). Lines of one thread keep their order; lines of different threads
 * may interleave by up to one loop iteration (each carries its timestamp). */
#define STAGE_BYTES (16 * 1024)
_Static_assert(TMS_LOG_LINE_MAX < STAGE_BYTES, "a line fits a stage");

static __thread char *stage;
static __thread size_t stage_len;
static __thread uint64_t stage_lines;

void tms_log_stage_start(void)
{
    if (!stage)
        stage = malloc(STAGE_BYTES); /* NULL: lines go to the shared buffer at once */
}

void tms_log_stage_flush(void)
{
    if (stage_len) {
        emit_shared(stage, stage_len, stage_lines);
        stage_len = 0;
        stage_lines = 0;
    }
}

void tms_log_stage_stop(void)
{
    tms_log_stage_flush();
    free(stage);
    stage = NULL;
}

static void emit(const char *line, size_t n)
{
    if (stage && atomic_load_explicit(&buffered, memory_order_relaxed)) {
        if (stage_len + n > STAGE_BYTES)
            tms_log_stage_flush();
        memcpy(stage + stage_len, line, n); /* n <= TMS_LOG_LINE_MAX < STAGE_BYTES */
        stage_len += n;
        stage_lines++;
        return;
    }
    tms_log_stage_flush(); /* unbuffered again: what was staged goes first */
    emit_shared(line, n, 1);
}

static void *writer_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&w.lock);
    for (;;) {
        char *out;
        size_t n;
        struct timespec until;
        while (w.len == 0 && !w.stop) {
            w.idle = true;
            pthread_cond_wait(&w.cond, &w.lock);
        }
        w.idle = false;
        if (w.len == 0)
            break; /* stopping, and everything is out */
        out = w.fill;
        n = w.len;
        w.fill = w.spare;
        w.spare = out;
        w.len = 0;
        pthread_mutex_unlock(&w.lock);
        write_all(out, n);
        pthread_mutex_lock(&w.lock);
        if (w.stop)
            continue;
        /* Gather for a while: appends do not wake us (idle is false), a stop does. */
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_nsec += BATCH_NS;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        while (!w.stop && pthread_cond_timedwait(&w.cond, &w.lock, &until) != ETIMEDOUT)
            ;
    }
    w.running = false;
    pthread_mutex_unlock(&w.lock);
    return NULL;
}

int tms_log_start_writer(void)
{
    pthread_condattr_t attr;
    sigset_t all, old;
    int rc;
    pthread_mutex_lock(&w.lock);
    if (w.running) {
        pthread_mutex_unlock(&w.lock);
        return 0;
    }
    if (!w.fill) {
        w.fill = malloc(TMS_LOG_BUFFER_BYTES);
        w.spare = malloc(TMS_LOG_BUFFER_BYTES);
        if (!w.fill || !w.spare) {
            free(w.fill);
            free(w.spare);
            w.fill = w.spare = NULL;
            pthread_mutex_unlock(&w.lock);
            return -TMS_EIO;
        }
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&w.cond, &attr);
        pthread_condattr_destroy(&attr);
    }
    w.len = 0;
    w.stop = false;
    w.idle = false;
    w.running = true;
    /* The signals are the main thread's (core/workers.c): the log thread takes none. */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    rc = pthread_create(&w.thread, NULL, writer_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        w.running = false;
        pthread_mutex_unlock(&w.lock);
        return -TMS_EIO;
    }
    pthread_setname_np(w.thread, "tms-log");
    atomic_store_explicit(&buffered, true, memory_order_release);
    pthread_mutex_unlock(&w.lock);
    tms_metrics_counter(DROPPED_NAME, DROPPED_HELP, ""); /* shown from the start, at 0 */
    return 0;
}

void tms_log_stop_writer(void)
{
    pthread_mutex_lock(&w.lock);
    if (!w.running) {
        pthread_mutex_unlock(&w.lock);
        return;
    }
    w.stop = true;
    pthread_cond_broadcast(&w.cond);
    pthread_mutex_unlock(&w.lock);
    pthread_join(w.thread, NULL); /* it wrote out everything before it ended */
    atomic_store_explicit(&buffered, false, memory_order_release);
}

void tms_log_flush_now(void)
{
    tms_log_stage_flush();
    pthread_mutex_lock(&w.lock);
    if (w.running && w.len) {
        write_all(w.fill, w.len);
        w.len = 0;
    }
    pthread_mutex_unlock(&w.lock);
}

uint64_t tms_log_dropped(void)
{
    return atomic_load_explicit(&dropped, memory_order_relaxed);
}

/* ---- formatting ------------------------------------------------------------------ */

static void put2(char *p, int v)
{
    p[0] = (char)('0' + v / 10);
    p[1] = (char)('0' + v % 10);
}

/* "ts=YYYY-MM-DDTHH:MM:SS.mmmZ level=L event=E" into l; the date and time of day are
 * formatted once per second per thread. */
static void begin(tms_log_line_t *l, tms_log_level_t level, const char *event)
{
    static __thread time_t cached_sec = -1;
    static __thread char cached[19];
    struct timespec ts;
    size_t n = strlen(event);
    int ms;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (ts.tv_sec != cached_sec) {
        struct tm tm;
        gmtime_r(&ts.tv_sec, &tm);
        int y = tm.tm_year + 1900;
        cached[0] = (char)('0' + (y / 1000) % 10);
        cached[1] = (char)('0' + (y / 100) % 10);
        put2(cached + 2, y % 100);
        cached[4] = '-';
        put2(cached + 5, tm.tm_mon + 1);
        cached[7] = '-';
        put2(cached + 8, tm.tm_mday);
        cached[10] = 'T';
        put2(cached + 11, tm.tm_hour);
        cached[13] = ':';
        put2(cached + 14, tm.tm_min);
        cached[16] = ':';
        put2(cached + 17, tm.tm_sec);
        cached_sec = ts.tv_sec;
    }
    memcpy(l->buf, "ts=", 3);
    memcpy(l->buf + 3, cached, 19);
    ms = (int)(ts.tv_nsec / 1000000);
    l->buf[22] = '.';
    l->buf[23] = (char)('0' + ms / 100);
    put2(l->buf + 24, ms % 100);
    memcpy(l->buf + 26, "Z level=", 8);
    l->len = 34;
    memcpy(l->buf + l->len, level_names[level], level_lens[level]);
    l->len += level_lens[level];
    memcpy(l->buf + l->len, " event=", 7);
    l->len += 7;
    tms_log_add(l, event, n);
}

bool tms_log_begin(tms_log_line_t *l, tms_log_level_t level, const char *event)
{
    if (!tms_log_enabled(level))
        return false;
    begin(l, level, event);
    return true;
}

/* Room for the newline is always kept. */
void tms_log_add(tms_log_line_t *l, const char *s, size_t n)
{
    size_t room = sizeof(l->buf) - 1 - l->len;
    if (n > room)
        n = room;
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

void tms_log_add_str(tms_log_line_t *l, const char *s)
{
    tms_log_add(l, s, strlen(s));
}

/* tms_log_quote's rules into out (size >= 3); returns the length written. */
static size_t quote(char *out, size_t size, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    out[o++] = '"';
    for (size_t i = 0; i < len && o + 5 < size; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20 || c >= 0x7f) {
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        } else {
            out[o++] = (char)c;
        }
    }
    out[o++] = '"';
    return o;
}

void tms_log_add_quoted(tms_log_line_t *l, const char *s, size_t n, size_t max_out)
{
    size_t room = sizeof(l->buf) - 1 - l->len;
    if (max_out > room)
        max_out = room;
    if (max_out < 3)
        return;
    /* quote() keeps one byte of size for a terminator, which a line does not need */
    l->len += quote(l->buf + l->len, max_out + 1, s, n);
}

void tms_log_add_int(tms_log_line_t *l, int64_t v)
{
    char tmp[24];
    size_t i = sizeof(tmp);
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        tmp[--i] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        tmp[--i] = '-';
    tms_log_add(l, tmp + i, sizeof(tmp) - i);
}

void tms_log_add_ms(tms_log_line_t *l, uint64_t ns)
{
    uint64_t us = (ns + 500) / 1000;
    char frac[4];
    tms_log_add_int(l, (int64_t)(us / 1000));
    frac[0] = '.';
    frac[1] = (char)('0' + (us % 1000) / 100);
    frac[2] = (char)('0' + (us % 100) / 10);
    frac[3] = (char)('0' + us % 10);
    tms_log_add(l, frac, 4);
}

void tms_log_end(tms_log_line_t *l)
{
    l->buf[l->len++] = '\n';
    emit(l->buf, l->len);
}

void tms_log(tms_log_level_t level, const char *event, const char *fmt, ...)
{
    tms_log_line_t l;
    va_list ap;
    int n;

    if (!tms_log_enabled(level))
        return;
    begin(&l, level, event);
    if (fmt && *fmt && l.len + 2 < sizeof(l.buf)) {
        l.buf[l.len++] = ' ';
        va_start(ap, fmt);
        n = vsnprintf(l.buf + l.len, sizeof(l.buf) - l.len, fmt, ap);
        va_end(ap);
        if (n > 0)
            l.len += (size_t)n;
        if (l.len > sizeof(l.buf) - 1)
            l.len = sizeof(l.buf) - 1;
    }
    tms_log_end(&l);
}

const char *tms_log_quote(char *buf, size_t size, const char *s, size_t len)
{
    size_t o;
    if (size < 3) {
        if (size)
            buf[0] = '\0';
        return buf;
    }
    o = quote(buf, size, s, len);
    buf[o] = '\0';
    return buf;
}
