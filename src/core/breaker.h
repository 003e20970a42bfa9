/* Circuit breaker and retry back-off for calls to one external service (SMTP), as
 * pure functions of their inputs: the caller passes the time and the random number,
 * so the rules are unit-tested without a clock or a network. */
#ifndef TMS_CORE_BREAKER_H
#define TMS_CORE_BREAKER_H

#include <stdbool.h>
#include <stdint.h>

#define TMS_BREAKER_WINDOW_MAX 64

typedef enum tms_breaker_state {
    TMS_BREAKER_CLOSED = 0,    /* calls go through; outcomes fill the window */
    TMS_BREAKER_OPEN = 1,      /* calls are refused until the cool-down ends */
    TMS_BREAKER_HALF_OPEN = 2, /* one probe call decides: closed again or open again */
} tms_breaker_state_t;

typedef struct tms_breaker {
    int window;          /* N: outcomes considered */
    int threshold_pct;   /* opens when failures * 100 >= threshold_pct * N */
    int64_t cooldown_ms; /* open -> half-open after this */
    tms_breaker_state_t state;
    uint8_t outcomes[TMS_BREAKER_WINDOW_MAX]; /* ring: 1 = failure */
    int count, pos, failures;
    int64_t opened_at_ms;
    bool probe_out; /* half-open: the probe is in flight */
} tms_breaker_t;

/** Start closed with an empty window. window is clamped to 1..TMS_BREAKER_WINDOW_MAX,
 * threshold_pct to 1..100. */
void tms_breaker_init(tms_breaker_t *b, int window, int threshold_pct, int64_t cooldown_ms);

/** May a call start at now_ms? Closed: yes. Open: no, unless the cool-down is over,
 * which moves to half-open and lets this call be the one probe. Half-open: no while
 * the probe is out. */
bool tms_breaker_allow(tms_breaker_t *b, int64_t now_ms);

/** Record the outcome of an allowed call. Opens when the window is full and at least
 * threshold_pct of it failed; in half-open the probe closes (success, with an empty
 * window) or reopens (failure) the breaker. Returns the new state. */
tms_breaker_state_t tms_breaker_record(tms_breaker_t *b, bool failed, int64_t now_ms);

/** Name for logs and docs: "closed", "open", "half_open". */
const char *tms_breaker_state_name(tms_breaker_state_t s);

/** "Full jitter" back-off before attempt+1 (attempt >= 1 just failed): a value in
 * [0, min(max_ms, base_ms * 2^(attempt-1))], picked by rnd. */
int64_t tms_backoff_ms(int attempt, int64_t base_ms, int64_t max_ms, uint32_t rnd);

#endif
