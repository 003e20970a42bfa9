/* Work before the loop waits (core/flush_later.h): an item asked for many times in one
 * turn runs once, before the loop waits; a removed item does not run; an item listed
 * again by its own run runs again before the loop waits; once closed, nothing is listed
 * (the caller does the work at once) and listed items can still be removed. */
#include <uv.h>

#include "core/flush_later.h"
#include "test.h"

typedef struct conn {
    int id;
    int runs;
    int relist; /* times its run lists it again */
    tms_flush_item_t item;
} conn_t;

static tms_flush_later_t *the_list;
static int order[16], norder;

static void on_flush(tms_flush_item_t *item)
{
    conn_t *c = TMS_FLUSH_OWNER(item, conn_t, item);
    CHECK(!tms_flush_item_listed(item)); /* off the list before its run */
    c->runs++;
    if (norder < 16)
        order[norder++] = c->id;
    if (c->relist > 0) {
        c->relist--;
        CHECK(tms_flush_later_add(the_list, item));
    }
}

typedef struct turn {
    uv_timer_t timer;
    conn_t *conns;
    int step;
} turn_t;

/* Step 0 (a timer callback, i.e. inside a turn): conns 0 and 1 ask three times each,
 * conn 2 asks and is removed. Step 1, the next turn: what the prepare ran is checked. */
static void on_timer(uv_timer_t *t)
{
    turn_t *tu = t->data;
    conn_t *c = tu->conns;
    if (tu->step == 0) {
        for (int i = 0; i < 3; i++) {
            CHECK(tms_flush_later_add(the_list, &c[0].item));
            CHECK(tms_flush_later_add(the_list, &c[1].item));
        }
        CHECK(tms_flush_later_add(the_list, &c[2].item));
        tms_flush_item_remove(&c[2].item);
        tms_flush_item_remove(&c[2].item); /* twice: a no-op */
        CHECK_EQ_INT(c[0].runs, 0);        /* not in the turn that asked */
        tu->step = 1;
        uv_timer_start(t, on_timer, 1, 0);
        return;
    }
    CHECK_EQ_INT(c[0].runs, 2); /* once, and once more for its own relist */
    CHECK_EQ_INT(c[1].runs, 1);
    CHECK_EQ_INT(c[2].runs, 0);
    uv_close((uv_handle_t *)t, NULL);
}

static void test_once_per_turn_before_the_loop_waits(void)
{
    uv_loop_t loop;
    tms_flush_later_t list;
    conn_t c[3] = {{.id = 0, .relist = 1}, {.id = 1}, {.id = 2}};
    turn_t tu = {.conns = c};
    uv_loop_init(&loop);
    the_list = &list;
    norder = 0;
    tms_flush_later_init(&list, &loop, on_flush);
    uv_timer_init(&loop, &tu.timer);
    tu.timer.data = &tu;
    uv_timer_start(&tu.timer, on_timer, 0, 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(norder, 3); /* 1 and 0 (last listed first), then 0 again */
    CHECK_EQ_INT(order[0], 1);
    CHECK_EQ_INT(order[2], 0);
    tms_flush_later_close(&list);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&loop), 0); /* the handle is closed and freed */
}

static void test_run_now_and_closed_list(void)
{
    uv_loop_t loop;
    tms_flush_later_t list;
    conn_t c[2] = {{.id = 0}, {.id = 1}};
    uv_loop_init(&loop);
    the_list = &list;
    norder = 0;
    tms_flush_later_init(&list, &loop, on_flush);
    CHECK(tms_flush_later_open(&list));
    CHECK(tms_flush_later_add(&list, &c[0].item));
    CHECK(tms_flush_later_add(&list, &c[1].item));
    tms_flush_later_run(&list); /* a stopping owner: everything now */
    CHECK_EQ_INT(c[0].runs, 1);
    CHECK_EQ_INT(c[1].runs, 1);
    CHECK(tms_flush_later_add(&list, &c[0].item));
    tms_flush_later_close(&list);
    tms_flush_later_close(&list); /* twice: a no-op */
    CHECK(!tms_flush_later_open(&list));
    CHECK(!tms_flush_later_add(&list, &c[1].item)); /* closed: do it at once */
    CHECK(!tms_flush_item_listed(&c[1].item));
    CHECK(tms_flush_item_listed(&c[0].item)); /* listed before the close: stays */
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(c[0].runs, 1);        /* not run by a closed list */
    tms_flush_item_remove(&c[0].item); /* its connection closes */
    CHECK(!tms_flush_item_listed(&c[0].item));
    CHECK(list.head == NULL);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

int main(void)
{
    RUN_TEST(test_once_per_turn_before_the_loop_waits);
    RUN_TEST(test_run_now_and_closed_list);
    TEST_EXIT();
}
