#include "core/notify.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/ratelimit.h"

#define HOUR_MS (3600 * 1000)
#define REMEMBERED 1024 /* events let through, for redeliveries */
#define EVENT_ID_MAX 36

struct tms_notify_limit {
    tms_ratelimit_t *per_assigner, *per_recipient; /* NULL: that limit is off */
    char sent[REMEMBERED][EVENT_ID_MAX + 1];
    size_t next; /* ring position */
};

tms_notify_limit_t *tms_notify_limit_new(uint32_t per_assigner, uint32_t per_recipient,
                                         size_t max_keys)
{
    tms_notify_limit_t *l = tms_new(tms_notify_limit_t);
    if (max_keys == 0)
        max_keys = 1;
    if (per_assigner && !(l->per_assigner = tms_ratelimit_new(per_assigner, HOUR_MS, max_keys)))
        tms_oom(__FILE__, __LINE__);
    if (per_recipient && !(l->per_recipient = tms_ratelimit_new(per_recipient, HOUR_MS, max_keys)))
        tms_oom(__FILE__, __LINE__);
    return l;
}

void tms_notify_limit_free(tms_notify_limit_t **pl)
{
    tms_notify_limit_t *l = *pl;
    if (!l)
        return;
    *pl = NULL;
    tms_ratelimit_free(&l->per_assigner);
    tms_ratelimit_free(&l->per_recipient);
    free(l);
}

static bool remembered(const tms_notify_limit_t *l, const char *event_id)
{
    for (size_t i = 0; i < REMEMBERED; i++) {
        if (l->sent[i][0] && strcmp(l->sent[i], event_id) == 0)
            return true;
    }
    return false;
}

tms_notify_verdict_t tms_notify_limit_check(tms_notify_limit_t *l, const char *event_id,
                                            const char *assigner, const char *recipient,
                                            uint64_t now_ms)
{
    char key[160];
    if (!l->per_assigner && !l->per_recipient)
        return TMS_NOTIFY_SEND;
    if (remembered(l, event_id))
        return TMS_NOTIFY_SEND;
    if (l->per_assigner && assigner[0]) {
        snprintf(key, sizeof(key), "%.64s>%.64s", assigner, recipient);
        if (!tms_ratelimit_take(l->per_assigner, key, now_ms).allowed)
            return TMS_NOTIFY_OVER_ASSIGNER;
    }
    /* A token of the assigner's budget is spent even when the recipient's is empty:
     * the cheaper mistake, since both refill within the hour. */
    if (l->per_recipient && !tms_ratelimit_take(l->per_recipient, recipient, now_ms).allowed)
        return TMS_NOTIFY_OVER_RECIPIENT;
    snprintf(l->sent[l->next], sizeof(l->sent[l->next]), "%s", event_id);
    l->next = (l->next + 1) % REMEMBERED;
    return TMS_NOTIFY_SEND;
}

const char *tms_notify_verdict_name(tms_notify_verdict_t v)
{
    switch (v) {
    case TMS_NOTIFY_SEND:
        return "sent";
    case TMS_NOTIFY_OVER_ASSIGNER:
        return "per_assigner";
    case TMS_NOTIFY_OVER_RECIPIENT:
        return "per_recipient";
    }
    return "unknown";
}

/* ---- bodies ---------------------------------------------------------------- */

typedef struct {
    char *p;
    size_t len, cap;
} buf_t;

static void add(buf_t *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->p = tms_realloc(b->p, b->cap);
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void adds(buf_t *b, const char *s)
{
    add(b, s, strlen(s));
}

static void addf(buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void addf(buf_t *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    int n;
    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    add(b, tmp, n < 0 ? 0 : (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

char *tms_notify_text(int64_t task_id, const char *title, const char *assigner)
{
    buf_t b = {0};
    addf(&b, "Hello,\n\nYou have been assigned task %" PRId64 " in TMS", task_id);
    if (assigner && *assigner)
        addf(&b, " by user %.64s", assigner);
    if (!title) { /* an original system's event: its id only, as the original mailed */
        adds(&b, ".\n\n-- TMS\n");
        return b.p;
    }
    adds(&b, ".\n\nIts title, as a TMS user wrote it (not a message from TMS):\n> ");
    /* Every line of the title quoted, so no line of it can pass for TMS's own text. */
    for (const char *p = title; *p; p++) {
        if (*p == '\r')
            continue;
        if (*p == '\n')
            adds(&b, "\n> ");
        else
            add(&b, p, 1);
    }
    adds(&b, "\n\n-- TMS\n");
    return b.p;
}

static void add_html_escaped(buf_t *b, const char *s)
{
    for (const char *p = s; *p; p++) {
        switch (*p) {
        case '<':
            adds(b, "&lt;");
            break;
        case '>':
            adds(b, "&gt;");
            break;
        case '&':
            adds(b, "&amp;");
            break;
        case '"':
            adds(b, "&quot;");
            break;
        case '\'':
            adds(b, "&#39;");
            break;
        default:
            add(b, p, 1);
        }
    }
}

char *tms_notify_html(int64_t task_id, const char *title, const char *assigner)
{
    buf_t b = {0};
    addf(&b, "<p>Hello,</p><p>You have been assigned task %" PRId64 " in TMS", task_id);
    if (assigner && *assigner) {
        adds(&b, " by user ");
        add_html_escaped(&b, assigner);
    }
    if (!title) {
        adds(&b, ".</p><p>-- TMS</p>\n");
        return b.p;
    }
    adds(&b, ".</p><p>Its title, as a TMS user wrote it (not a message from TMS):</p>"
             "<blockquote style=\"border-left:3px solid #999;margin:0;padding-left:8px\">");
    add_html_escaped(&b, title);
    adds(&b, "</blockquote><p>-- TMS</p>\n");
    return b.p;
}
