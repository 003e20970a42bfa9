/* One timer for many deadlines: entries expire in deadline order (equal deadlines in
 * the order added), a removed entry never expires, an entry due before the armed time
 * re-arms the timer, and an entry added by an expiry callback does not push back one
 * that was already waiting. */
#include <uv.h>

#include "core/deadlines.h"
#include "test.h"

typedef struct entry {
    tms_deadline_t d; /* first member */
    int id;
} entry_t;

typedef struct seen {
    int order[16];
    uint64_t at[16];
    int n;
    uv_loop_t *loop;
    tms_deadlines_t *list;
    entry_t *add_on_expiry; /* added (due in 300 ms) by the first expiry */
} seen_t;

static void on_expired(tms_deadline_t *d, void *ctx)
{
    seen_t *s = ctx;
    entry_t *e = (entry_t *)d;
    CHECK(!d->linked);
    if (s->n < 16) {
        s->order[s->n] = e->id;
        s->at[s->n] = uv_now(s->loop);
        s->n++;
    }
    if (s->add_on_expiry) {
        entry_t *later = s->add_on_expiry;
        s->add_on_expiry = NULL;
        tms_deadlines_add(s->list, &later->d, uv_now(s->loop) + 300);
    }
}

static void start(uv_loop_t *loop, seen_t *s)
{
    uv_loop_init(loop);
    s->loop = loop;
    s->list = tms_deadlines_new(loop, on_expired, s);
}

static void finish(uv_loop_t *loop, seen_t *s)
{
    tms_deadlines_free(&s->list);
    uv_run(loop, UV_RUN_DEFAULT); /* the timer's close */
    CHECK_EQ_INT(uv_loop_close(loop), 0);
}

static void test_order_and_remove(void)
{
    uv_loop_t loop;
    seen_t s = {0};
    entry_t e[5] = {{.id = 0}, {.id = 1}, {.id = 2}, {.id = 3}, {.id = 4}};
    start(&loop, &s);
    uint64_t now = uv_now(&loop);
    tms_deadlines_add(s.list, &e[0].d, now + 60);
    tms_deadlines_add(s.list, &e[1].d, now + 20);
    tms_deadlines_add(s.list, &e[2].d, now + 40);
    tms_deadlines_add(s.list, &e[3].d, now + 20); /* same as 1: after it */
    tms_deadlines_add(s.list, &e[4].d, now + 30);
    tms_deadlines_remove(s.list, &e[4].d);
    tms_deadlines_remove(s.list, &e[4].d); /* twice: a no-op */
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(s.n, 4);
    CHECK_EQ_INT(s.order[0], 1);
    CHECK_EQ_INT(s.order[1], 3);
    CHECK_EQ_INT(s.order[2], 2);
    CHECK_EQ_INT(s.order[3], 0);
    CHECK(s.at[0] >= now + 20);
    CHECK(s.at[3] >= now + 60);
    finish(&loop, &s);
}

/* Armed for 500 ms, then an entry due in 20: it expires at 20, not at 500. */
static void test_earlier_entry_rearms(void)
{
    uv_loop_t loop;
    seen_t s = {0};
    entry_t late = {.id = 1}, early = {.id = 2};
    start(&loop, &s);
    uint64_t now = uv_now(&loop);
    tms_deadlines_add(s.list, &late.d, now + 500);
    tms_deadlines_add(s.list, &early.d, now + 20);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(s.n, 2);
    CHECK_EQ_INT(s.order[0], 2);
    CHECK(s.at[0] - now < 300);
    CHECK_EQ_INT(s.order[1], 1);
    CHECK(s.at[1] >= now + 500);
    finish(&loop, &s);
}

/* The first expiry (at 20) adds an entry due 300 ms later; the one already waiting
 * (due at 100) still expires at 100. */
static void test_entry_added_on_expiry_does_not_delay_others(void)
{
    uv_loop_t loop;
    seen_t s = {0};
    entry_t a = {.id = 1}, b = {.id = 2}, c = {.id = 3};
    start(&loop, &s);
    s.add_on_expiry = &c;
    uint64_t now = uv_now(&loop);
    tms_deadlines_add(s.list, &a.d, now + 20);
    tms_deadlines_add(s.list, &b.d, now + 100);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(s.n, 3);
    CHECK_EQ_INT(s.order[0], 1);
    CHECK_EQ_INT(s.order[1], 2);
    CHECK(s.at[1] - now < 250);
    CHECK_EQ_INT(s.order[2], 3);
    CHECK(s.at[2] >= s.at[0] + 300);
    finish(&loop, &s);
}

int main(void)
{
    RUN_TEST(test_order_and_remove);
    RUN_TEST(test_earlier_entry_rearms);
    RUN_TEST(test_entry_added_on_expiry_does_not_delay_others);
    TEST_EXIT();
}
