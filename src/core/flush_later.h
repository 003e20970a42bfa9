/* Work done once per item before the loop next waits for I/O, however often it was
 * asked for in this turn of the loop: the HTTP/1.1 server's corked (pipelined)
 * responses and the HTTP/2 connections' frames (gRPC server and client) go out in one
 * write per connection per turn (a write per gRPC reply was a third of a GetTask's
 * CPU; issue 19). An intrusive list of items, run by a uv_prepare that does not keep
 * the loop alive. Every function runs on the loop's thread. */
#ifndef TMS_CORE_FLUSH_LATER_H
#define TMS_CORE_FLUSH_LATER_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

typedef struct tms_flush_item tms_flush_item_t;
typedef void (*tms_flush_fn)(tms_flush_item_t *item);

typedef struct tms_flush_later {
    uv_prepare_t *prepare; /* its own allocation: closed and freed by tms_flush_later_close */
    tms_flush_item_t *head;
    tms_flush_fn fn;
} tms_flush_later_t;

/* Embedded in what is flushed (a connection); zeroed, it is not listed. */
struct tms_flush_item {
    tms_flush_later_t *list; /* set while listed */
    tms_flush_item_t *prev, *next;
};

/* The struct that embeds an item, from the item. */
#define TMS_FLUSH_OWNER(item, type, member)                                                        \
    ((type *)(void *)((char *)(item)-offsetof(type, member)))

/** Starts f on loop: fn runs for each listed item before the loop waits. */
void tms_flush_later_init(tms_flush_later_t *f, uv_loop_t *loop, tms_flush_fn fn);

/** Lists item (once: a listed item stays where it is) and returns true; returns false,
 * listing nothing, once f is closed (the caller then does the work at once). */
bool tms_flush_later_add(tms_flush_later_t *f, tms_flush_item_t *item);

/** Takes item off its list, if it is on one (a closing connection, or its work done
 * early). */
void tms_flush_item_remove(tms_flush_item_t *item);

static inline bool tms_flush_item_listed(const tms_flush_item_t *item)
{
    return item->list != NULL;
}

/** Whether items can still be listed (f is started and not closed). */
static inline bool tms_flush_later_open(const tms_flush_later_t *f)
{
    return f->prepare != NULL;
}

/** Runs fn for every listed item now, until the list is empty; each leaves the list
 * before its fn runs (fn may close what embeds it, or list it again: it then runs again). */
void tms_flush_later_run(tms_flush_later_t *f);

/** Stops f: its handle closes and is freed. Items still listed stay until removed and
 * are not run by f any more. Idempotent. */
void tms_flush_later_close(tms_flush_later_t *f);

#endif
