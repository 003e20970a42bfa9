/* The circuit breaker of the original's notification service (opossum: opens at 50%
 * errors, retries after 10 s), counted over the last N calls instead of a time
 * window so that a quiet server is judged on as many calls as a busy one. */
#include "core/breaker.h"

static void reset_window(tms_breaker_t *b)
{
    b->count = b->pos = b->failures = 0;
}

void tms_breaker_init(tms_breaker_t *b, int window, int threshold_pct, int64_t cooldown_ms)
{
    *b = (tms_breaker_t){0};
    b->window = window < 1 ? 1 : window > TMS_BREAKER_WINDOW_MAX ? TMS_BREAKER_WINDOW_MAX : window;
    b->threshold_pct = threshold_pct < 1 ? 1 : threshold_pct > 100 ? 100 : threshold_pct;
    b->cooldown_ms = cooldown_ms < 0 ? 0 : cooldown_ms;
    b->state = TMS_BREAKER_CLOSED;
}

bool tms_breaker_allow(tms_breaker_t *b, int64_t now_ms)
{
    switch (b->state) {
    case TMS_BREAKER_CLOSED:
        return true;
    case TMS_BREAKER_OPEN:
        if (now_ms - b->opened_at_ms < b->cooldown_ms)
            return false;
        b->state = TMS_BREAKER_HALF_OPEN;
        b->probe_out = true;
        return true;
    case TMS_BREAKER_HALF_OPEN:
        if (b->probe_out)
            return false;
        b->probe_out = true;
        return true;
    }
    return false;
}

static void open_at(tms_breaker_t *b, int64_t now_ms)
{
    b->state = TMS_BREAKER_OPEN;
    b->opened_at_ms = now_ms;
    b->probe_out = false;
    reset_window(b);
}

tms_breaker_state_t tms_breaker_record(tms_breaker_t *b, bool failed, int64_t now_ms)
{
    switch (b->state) {
    case TMS_BREAKER_HALF_OPEN:
        if (failed) {
            open_at(b, now_ms);
        } else {
            b->state = TMS_BREAKER_CLOSED;
            b->probe_out = false;
            reset_window(b);
        }
        break;
    case TMS_BREAKER_OPEN:
        /* A call allowed before the breaker opened finished late: it says nothing
         * new, and counting it would shorten the next closed period. */
        break;
    case TMS_BREAKER_CLOSED:
        if (b->count == b->window)
            b->failures -= b->outcomes[b->pos];
        else
            b->count++;
        b->outcomes[b->pos] = failed ? 1 : 0;
        b->failures += failed ? 1 : 0;
        b->pos = (b->pos + 1) % b->window;
        if (b->count == b->window && b->failures * 100 >= b->threshold_pct * b->window)
            open_at(b, now_ms);
        break;
    }
    return b->state;
}

const char *tms_breaker_state_name(tms_breaker_state_t s)
{
    return s == TMS_BREAKER_CLOSED ? "closed" : s == TMS_BREAKER_OPEN ? "open" : "half_open";
}

int64_t tms_backoff_ms(int attempt, int64_t base_ms, int64_t max_ms, uint32_t rnd)
{
    int64_t cap = base_ms < 1 ? 1 : base_ms;
    for (int i = 1; i < attempt && cap < max_ms; i++)
        cap *= 2;
    if (cap > max_ms)
        cap = max_ms;
    if (cap <= 0)
        return 0;
    return (int64_t)(rnd % (uint64_t)(cap + 1));
}
