#include "core/deadlines.h"

#include <stdlib.h>

#include "core/alloc.h"
#include "core/uv_close.h"

struct tms_deadlines {
    uv_loop_t *loop;
    tms_deadline_t *first, *last;
    uv_timer_t *timer;  /* its own allocation: closed after the list is freed */
    uint64_t timer_due; /* when timer fires, while it is active */
    tms_deadline_fn expired;
    void *ctx;
};

static void on_timer(uv_timer_t *timer);

static void arm(tms_deadlines_t *list, uint64_t due)
{
    uint64_t now = uv_now(list->loop);
    list->timer_due = due;
    uv_timer_start(list->timer, on_timer, due > now ? due - now : 0, 0);
}

/* Takes every entry past its deadline, then sleeps until the first one left is due.
 * The callback may add and remove entries. */
static void on_timer(uv_timer_t *timer)
{
    tms_deadlines_t *list = timer->data;
    uint64_t now = uv_now(list->loop);
    tms_deadline_t *d;
    while ((d = list->first) != NULL && d->due <= now) {
        tms_deadlines_remove(list, d);
        list->expired(d, list->ctx);
    }
    if (list->first)
        arm(list, list->first->due); /* also over what the callbacks armed */
}

tms_deadlines_t *tms_deadlines_new(uv_loop_t *loop, tms_deadline_fn expired, void *ctx)
{
    tms_deadlines_t *list = tms_new(tms_deadlines_t);
    list->loop = loop;
    list->expired = expired;
    list->ctx = ctx;
    list->timer = tms_new(uv_timer_t);
    uv_timer_init(loop, list->timer);
    list->timer->data = list;
    return list;
}

void tms_deadlines_add(tms_deadlines_t *list, tms_deadline_t *d, uint64_t due)
{
    tms_deadline_t *after = list->last;
    while (after && after->due > due)
        after = after->prev;
    d->due = due;
    d->linked = true;
    d->prev = after;
    d->next = after ? after->next : list->first;
    if (d->next)
        d->next->prev = d;
    else
        list->last = d;
    if (after)
        after->next = d;
    else
        list->first = d;
    /* A running timer finds later entries when it fires; one due earlier re-arms it. */
    if (!uv_is_active((uv_handle_t *)list->timer) || due < list->timer_due)
        arm(list, due);
}

void tms_deadlines_remove(tms_deadlines_t *list, tms_deadline_t *d)
{
    if (!d->linked)
        return;
    if (d->prev)
        d->prev->next = d->next;
    else
        list->first = d->next;
    if (d->next)
        d->next->prev = d->prev;
    else
        list->last = d->prev;
    d->prev = d->next = NULL;
    d->linked = false;
}

void tms_deadlines_free(tms_deadlines_t **plist)
{
    tms_deadlines_t *list = plist ? *plist : NULL;
    if (!list)
        return;
    *plist = NULL;
    uv_close((uv_handle_t *)list->timer, tms_uv_free_on_close);
    free(list);
}
