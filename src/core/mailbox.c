#include "core/mailbox.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "core/alloc.h"
#include "core/metrics.h"
#include "core/queue.h"
#include "core/status.h"

struct tms_mailbox {
    pthread_mutex_t lock;
    pthread_cond_t cond; /* threaded mode only */
    tms_msg_t *head, *tail;
    size_t queued_requests; /* counted against capacity */
    size_t depth;           /* everything queued */
    size_t capacity;
    size_t peak;
    uint64_t rejected;
    bool closed;
    bool threaded;
    /* loop mode, touched only on the owner thread: the same-thread fast path */
    pthread_t owner_thread;
    bool in_ready;
    tms_mailbox_t *ready_next;
    char name[32];
    /* loop mode */
    uv_async_t *async;
    tms_msg_handler_fn on_message;
    void *owner;
};

static void drain(uv_async_t *handle);

static tms_mailbox_t *alloc_mailbox(const char *name, size_t capacity)
{
    tms_mailbox_t *mb = tms_new(tms_mailbox_t);
    pthread_mutex_init(&mb->lock, NULL);
    mb->capacity = capacity ? capacity : 1;
    snprintf(mb->name, sizeof(mb->name), "%s", name);
    return mb;
}

tms_mailbox_t *tms_mailbox_new(uv_loop_t *loop, const char *name, size_t capacity,
                               tms_msg_handler_fn on_message, void *owner)
{
    tms_mailbox_t *mb = alloc_mailbox(name, capacity);
    mb->on_message = on_message;
    mb->owner = owner;
    mb->owner_thread = pthread_self();
    mb->async = tms_new(uv_async_t);
    mb->async->data = mb;
    if (uv_async_init(loop, mb->async, drain) != 0)
        tms_oom(__FILE__, __LINE__);
    return mb;
}

tms_mailbox_t *tms_mailbox_new_threaded(const char *name, size_t capacity)
{
    tms_mailbox_t *mb = alloc_mailbox(name, capacity);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&mb->cond, &attr);
    pthread_condattr_destroy(&attr);
    mb->threaded = true;
    return mb;
}

/* Appends under the lock; returns true when the consumer must be woken. A loop's
 * mailbox has one consumer: only when the list went from empty to non-empty, so a
 * burst of posts costs one wake-up. A threaded one (a work pool) may have several
 * consumers asleep: every post wakes one, or a second idle thread would sleep while
 * jobs wait behind the first (glibc's signal costs no system call with no waiter). */
static bool append_locked(tms_mailbox_t *mb, tms_msg_t *msg)
{
    bool was_empty = mb->head == NULL;
    TMS_FIFO_APPEND(mb->head, mb->tail, msg, next);
    mb->depth++;
    if (msg->kind != TMS_MSG_REPLY)
        mb->queued_requests++;
    if (mb->depth > mb->peak)
        mb->peak = mb->depth;
    return was_empty || mb->threaded;
}

/* Same-thread fast path. While a loop thread drains a mailbox, posts it makes to
 * other mailboxes of its own loop need no eventfd round trip: the mailbox joins a
 * per-thread ready list that the outer drain empties before returning to libuv.
 * Actor hops on one loop (gateway -> auth -> gateway -> rest) then cost no system
 * call. Rounds are capped so a chain of posts cannot keep the loop from its I/O. */
static __thread tms_mailbox_t *ready_head, *ready_tail;
static __thread int draining;
#define MAX_READY_ROUNDS 1024

static void wake(tms_mailbox_t *mb)
{
    if (mb->threaded) {
        pthread_cond_signal(&mb->cond);
    } else if (draining && pthread_equal(pthread_self(), mb->owner_thread)) {
        if (!mb->in_ready) {
            mb->in_ready = true;
            TMS_FIFO_APPEND(ready_head, ready_tail, mb, ready_next);
        }
    } else {
        uv_async_send(mb->async);
    }
}

static void ready_remove(tms_mailbox_t *mb)
{
    tms_mailbox_t **p = &ready_head, *prev = NULL;
    if (!mb->in_ready)
        return;
    while (*p && *p != mb) {
        prev = *p;
        p = &(*p)->ready_next;
    }
    if (*p) {
        *p = mb->ready_next;
        if (ready_tail == mb)
            ready_tail = prev;
    }
    mb->in_ready = false;
}

int tms_mailbox_post(tms_mailbox_t *mb, tms_msg_t **msg)
{
    bool need_wake;
    pthread_mutex_lock(&mb->lock);
    if (mb->closed) {
        pthread_mutex_unlock(&mb->lock);
        return -TMS_ECLOSED;
    }
    /* A stop message is never refused: shutdown must get through a full box. */
    if ((*msg)->kind == TMS_MSG_REQUEST && mb->queued_requests >= mb->capacity) {
        mb->rejected++;
        pthread_mutex_unlock(&mb->lock);
        return -TMS_EFULL;
    }
    need_wake = append_locked(mb, *msg);
    pthread_mutex_unlock(&mb->lock);
    *msg = NULL;
    if (need_wake)
        wake(mb);
    return 0;
}

void tms_mailbox_reply(tms_msg_t *msg)
{
    tms_mailbox_t *mb = msg->reply_to;
    bool need_wake;
    msg->kind = TMS_MSG_REPLY;
    if (!mb)
        goto undeliverable;
    /* Replies are accepted even after close: the requester is still draining. A
     * mailbox is freed only after every request it sent has been answered. */
    pthread_mutex_lock(&mb->lock);
    need_wake = append_locked(mb, msg);
    pthread_mutex_unlock(&mb->lock);
    if (need_wake)
        wake(mb);
    return;
undeliverable:
    if (msg->free_fn)
        msg->free_fn(msg);
}

static tms_msg_t *pop_all_locked(tms_mailbox_t *mb)
{
    tms_msg_t *list = mb->head;
    mb->head = mb->tail = NULL;
    mb->depth = 0;
    mb->queued_requests = 0;
    return list;
}

static void deliver(tms_mailbox_t *mb, tms_msg_t *msg)
{
    msg->next = NULL;
    if (msg->kind == TMS_MSG_REPLY) {
        if (msg->cont)
            msg->cont(msg);
        else if (msg->free_fn)
            msg->free_fn(msg);
    } else {
        mb->on_message(mb->owner, msg);
    }
}

/* Drains in batches: take the whole list at once so the lock is held only for a
 * pointer swap, and handle every message taken, including ones posted meanwhile by
 * a handler (they wake the async again and arrive in the next batch). */
static void drain_one(tms_mailbox_t *mb)
{
    tms_msg_t *list, *next;
    pthread_mutex_lock(&mb->lock);
    list = pop_all_locked(mb);
    pthread_mutex_unlock(&mb->lock);
    for (; list; list = next) {
        next = list->next;
        deliver(mb, list);
    }
}

/* Delivers what the ready list holds (posts made while draining), then leaves the
 * draining state. */
static void run_ready(void)
{
    int rounds = 0;
    while (ready_head) {
        tms_mailbox_t *mb = ready_head;
        ready_head = mb->ready_next;
        if (!ready_head)
            ready_tail = NULL;
        mb->in_ready = false;
        if (++rounds > MAX_READY_ROUNDS)
            uv_async_send(mb->async); /* let I/O in; the rest follows next turn */
        else
            drain_one(mb);
    }
    draining = 0;
}

static void drain(uv_async_t *handle)
{
    if (draining) { /* not expected: libuv does not nest callbacks */
        drain_one(handle->data);
        return;
    }
    draining = 1;
    drain_one(handle->data);
    run_ready();
}

bool tms_mailbox_batch_begin(void)
{
    if (draining)
        return false;
    draining = 1;
    return true;
}

void tms_mailbox_batch_end(bool began)
{
    if (began)
        run_ready();
}

tms_msg_t *tms_mailbox_take(tms_mailbox_t *mb, int timeout_ms)
{
    tms_msg_t *msg = NULL;
    return tms_mailbox_take_many(mb, timeout_ms, &msg, 1) ? msg : NULL;
}

size_t tms_mailbox_take_many(tms_mailbox_t *mb, int timeout_ms, tms_msg_t **out, size_t max)
{
    size_t n = 0;
    struct timespec deadline;
    if (timeout_ms >= 0) {
        clock_gettime(CLOCK_MONOTONIC, &deadline);
        deadline.tv_sec += timeout_ms / 1000;
        deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (deadline.tv_nsec >= 1000000000L) {
            deadline.tv_sec++;
            deadline.tv_nsec -= 1000000000L;
        }
    }
    pthread_mutex_lock(&mb->lock);
    while (!mb->head && !mb->closed) {
        if (timeout_ms < 0) {
            pthread_cond_wait(&mb->cond, &mb->lock);
        } else if (pthread_cond_timedwait(&mb->cond, &mb->lock, &deadline) == ETIMEDOUT) {
            break;
        }
    }
    while (mb->head && n < max) {
        tms_msg_t *msg = mb->head;
        mb->head = msg->next;
        if (!mb->head)
            mb->tail = NULL;
        mb->depth--;
        if (msg->kind != TMS_MSG_REPLY)
            mb->queued_requests--;
        msg->next = NULL;
        out[n++] = msg;
    }
    pthread_mutex_unlock(&mb->lock);
    return n;
}

size_t tms_mailbox_depth(tms_mailbox_t *mb)
{
    size_t d;
    pthread_mutex_lock(&mb->lock);
    d = mb->depth;
    pthread_mutex_unlock(&mb->lock);
    return d;
}

size_t tms_mailbox_peak(tms_mailbox_t *mb)
{
    size_t d;
    pthread_mutex_lock(&mb->lock);
    d = mb->peak;
    pthread_mutex_unlock(&mb->lock);
    return d;
}

uint64_t tms_mailbox_rejected(tms_mailbox_t *mb)
{
    uint64_t r;
    pthread_mutex_lock(&mb->lock);
    r = mb->rejected;
    pthread_mutex_unlock(&mb->lock);
    return r;
}

static double depth_gauge(void *arg)
{
    return (double)tms_mailbox_depth(arg);
}

void tms_mailbox_export_depth(tms_mailbox_t *mb)
{
    char labels[64];
    snprintf(labels, sizeof(labels), "actor=\"%s\"", mb->name);
    tms_metrics_gauge_fn("tms_mailbox_depth", "messages waiting in an actor's mailbox", labels,
                         depth_gauge, mb);
}

const char *tms_mailbox_name(tms_mailbox_t *mb)
{
    return mb->name;
}

void tms_mailbox_close(tms_mailbox_t *mb)
{
    pthread_mutex_lock(&mb->lock);
    mb->closed = true;
    pthread_mutex_unlock(&mb->lock);
    if (mb->threaded)
        pthread_cond_broadcast(&mb->cond);
}

static void free_list(tms_msg_t *list)
{
    tms_msg_t *next;
    for (; list; list = next) {
        next = list->next;
        if (list->free_fn)
            list->free_fn(list);
    }
}

static void destroy(tms_mailbox_t *mb)
{
    free_list(mb->head);
    pthread_mutex_destroy(&mb->lock);
    if (mb->threaded)
        pthread_cond_destroy(&mb->cond);
    free(mb);
}

static void on_async_closed(uv_handle_t *handle)
{
    tms_mailbox_t *mb = handle->data;
    free(handle);
    destroy(mb);
}

void tms_mailbox_free(tms_mailbox_t **pmb)
{
    tms_mailbox_t *mb = *pmb;
    if (!mb)
        return;
    *pmb = NULL;
    pthread_mutex_lock(&mb->lock);
    mb->closed = true;
    pthread_mutex_unlock(&mb->lock);
    if (mb->threaded) {
        destroy(mb);
        return;
    }
    ready_remove(mb);
    uv_close((uv_handle_t *)mb->async, on_async_closed);
}

/* ---- stopping actors ------------------------------------------------------ */

static void free_stop(tms_msg_t *msg)
{
    free(msg);
}

int tms_stop_send(tms_mailbox_t *mb, tms_mailbox_t *reply_to, tms_cont_fn cont, void *ctx)
{
    tms_msg_t *msg = tms_new(tms_msg_t);
    int rc;
    msg->kind = TMS_MSG_STOP;
    msg->reply_to = reply_to;
    msg->cont = cont;
    msg->ctx = ctx;
    msg->free_fn = free_stop;
    rc = tms_mailbox_post(mb, &msg);
    if (rc != 0)
        free(msg);
    return rc;
}

void tms_stopper_hold(tms_stopper_t *s, tms_msg_t *msg)
{
    msg->next = s->held;
    s->held = msg;
    if (s->state == 0)
        s->state = 1;
}

void tms_stopper_check(tms_stopper_t *s, tms_mailbox_t *mb, size_t inflight)
{
    tms_msg_t *msg, *next;
    if (s->state != 1 || inflight > 0)
        return;
    s->state = 2;
    tms_mailbox_close(mb);
    for (msg = s->held, s->held = NULL; msg; msg = next) {
        next = msg->next;
        msg->next = NULL;
        tms_mailbox_reply(msg);
    }
}
