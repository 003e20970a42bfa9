/* Deadlines of many waiting things on one libuv timer. Each waiting thing embeds a
 * tms_deadline_t; the list keeps them in deadline order and arms one timer for the
 * first. Adding walks from the end, so things with the same timeout (the common case:
 * one per server) go in after one step; removing is O(1). When the timer fires, every
 * entry due is taken off the list and handed to the expired callback, and the timer
 * sleeps until the first one left. A timer per waiting call, started and closed,
 * was 3 % of a GET (issue 19); REST calls and gRPC calls share this one. */
#ifndef TMS_CORE_DEADLINES_H
#define TMS_CORE_DEADLINES_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

typedef struct tms_deadline {
    struct tms_deadline *prev, *next;
    uint64_t due; /* uv_now() of the deadline */
    bool linked;
} tms_deadline_t;

typedef struct tms_deadlines tms_deadlines_t;

/** Called on the loop for an entry past its deadline, already off the list. */
typedef void (*tms_deadline_fn)(tms_deadline_t *d, void *ctx);

/** A list on loop whose expired entries go to expired(d, ctx). Never NULL. */
tms_deadlines_t *tms_deadlines_new(uv_loop_t *loop, tms_deadline_fn expired, void *ctx);

/** d waits until due (uv_now() milliseconds). d must not be on a list. */
void tms_deadlines_add(tms_deadlines_t *list, tms_deadline_t *d, uint64_t due);

/** d no longer waits (a no-op when it is not on the list). */
void tms_deadlines_remove(tms_deadlines_t *list, tms_deadline_t *d);

/** Frees the list (its timer closes asynchronously); entries still on it are forgotten
 * and never expire. */
void tms_deadlines_free(tms_deadlines_t **list);

#endif
