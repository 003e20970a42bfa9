/* Work done once per item before the loop waits (see flush_later.h). */
#include "core/flush_later.h"

#include "core/alloc.h"
#include "core/uv_close.h"

void tms_flush_item_remove(tms_flush_item_t *item)
{
    tms_flush_later_t *f = item->list;
    if (!f)
        return;
    if (item->prev)
        item->prev->next = item->next;
    else
        f->head = item->next;
    if (item->next)
        item->next->prev = item->prev;
    item->prev = item->next = NULL;
    item->list = NULL;
}

bool tms_flush_later_add(tms_flush_later_t *f, tms_flush_item_t *item)
{
    if (item->list)
        return true;
    if (!f->prepare)
        return false;
    item->list = f;
    item->prev = NULL;
    item->next = f->head;
    if (f->head)
        f->head->prev = item;
    f->head = item;
    return true;
}

void tms_flush_later_run(tms_flush_later_t *f)
{
    while (f->head) {
        tms_flush_item_t *item = f->head;
        tms_flush_item_remove(item);
        f->fn(item); /* may free what embeds item: it is off the list already */
    }
}

static void on_prepare(uv_prepare_t *h)
{
    tms_flush_later_run(h->data);
}

void tms_flush_later_init(tms_flush_later_t *f, uv_loop_t *loop, tms_flush_fn fn)
{
    f->head = NULL;
    f->fn = fn;
    f->prepare = tms_new(uv_prepare_t);
    uv_prepare_init(loop, f->prepare);
    f->prepare->data = f;
    uv_prepare_start(f->prepare, on_prepare);
    uv_unref((uv_handle_t *)f->prepare);
}

void tms_flush_later_close(tms_flush_later_t *f)
{
    if (f->prepare)
        uv_close((uv_handle_t *)f->prepare, tms_uv_free_on_close);
    f->prepare = NULL;
}
