/* Notification limits (per assigner and recipient, per recipient; redeliveries free)
 * and the bodies that mark the title as a user's text. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/notify.h"
#include "test.h"

#define HOUR 3600000ull
static const char *A = "aaaaaaaaaaaaaaaaaaaaaaaa", *B = "bbbbbbbbbbbbbbbbbbbbbbbb",
                  *V = "vvvvvvvvvvvvvvvvvvvvvvvv", *W = "wwwwwwwwwwwwwwwwwwwwwwww";

static const char *ev(int i)
{
    static char id[8][37];
    static int slot;
    char *out = id[slot++ % 8];
    snprintf(out, 37, "00000000-0000-4000-8000-%012d", i);
    return out;
}

static void test_per_assigner(void)
{
    tms_notify_limit_t *l = tms_notify_limit_new(3, 0, 100);
    uint64_t t = 1000;
    int sent = 0;
    /* the probe: one assigner, one victim, 11 events at once -> 3 */
    for (int i = 0; i < 11; i++)
        sent += tms_notify_limit_check(l, ev(i), A, V, t) == TMS_NOTIFY_SEND;
    CHECK_EQ_INT(sent, 3);
    CHECK_EQ_INT(tms_notify_limit_check(l, ev(11), A, V, t), TMS_NOTIFY_OVER_ASSIGNER);
    /* another assigner, or another recipient, has a budget of its own */
    CHECK_EQ_INT(tms_notify_limit_check(l, ev(12), B, V, t), TMS_NOTIFY_SEND);
    CHECK_EQ_INT(tms_notify_limit_check(l, ev(13), A, W, t), TMS_NOTIFY_SEND);
    /* refilled evenly: one more after a third of the hour, all of it after an hour */
    CHECK_EQ_INT(tms_notify_limit_check(l, ev(14), A, V, t + HOUR / 3 + 1), TMS_NOTIFY_SEND);
    CHECK_EQ_INT(tms_notify_limit_check(l, ev(15), A, V, t + HOUR / 3 + 2),
                 TMS_NOTIFY_OVER_ASSIGNER);
    sent = 0;
    for (int i = 16; i < 26; i++)
        sent += tms_notify_limit_check(l, ev(i), A, V, t + 2 * HOUR) == TMS_NOTIFY_SEND;
    CHECK_EQ_INT(sent, 3);
    /* events of no known assigner (the original's shape) meet only the recipient limit */
    for (int i = 26; i < 40; i++)
        CHECK_EQ_INT(tms_notify_limit_check(l, ev(i), "", V, t), TMS_NOTIFY_SEND);
    tms_notify_limit_free(&l);
    CHECK(l == NULL);
}

static void test_per_recipient(void)
{
    tms_notify_limit_t *l = tms_notify_limit_new(3, 5, 100);
    char who[25];
    int sent = 0, over_assigner = 0, over_recipient = 0;
    /* ten assigners, two events each, one victim: five in all */
    for (int i = 0; i < 20; i++) {
        snprintf(who, sizeof(who), "%024d", i / 2);
        switch (tms_notify_limit_check(l, ev(i), who, V, 1000)) {
        case TMS_NOTIFY_SEND:
            sent++;
            break;
        case TMS_NOTIFY_OVER_ASSIGNER:
            over_assigner++;
            break;
        case TMS_NOTIFY_OVER_RECIPIENT:
            over_recipient++;
            break;
        }
    }
    CHECK_EQ_INT(sent, 5);
    CHECK_EQ_INT(over_recipient, 15);
    CHECK_EQ_INT(over_assigner, 0);
    /* an assigner over its own limit does not eat into the recipient's budget */
    tms_notify_limit_free(&l);
    l = tms_notify_limit_new(2, 4, 100);
    for (int i = 0; i < 10; i++)
        (void)tms_notify_limit_check(l, ev(100 + i), A, V, 1000);
    CHECK_EQ_INT(tms_notify_limit_check(l, ev(120), B, V, 1000), TMS_NOTIFY_SEND);
    CHECK_EQ_INT(tms_notify_limit_check(l, ev(121), B, V, 1000), TMS_NOTIFY_SEND);
    CHECK_EQ_INT(tms_notify_limit_check(l, ev(122), B, V, 1000), TMS_NOTIFY_OVER_ASSIGNER);
    tms_notify_limit_free(&l);
}

static void test_redelivery_and_off(void)
{
    tms_notify_limit_t *l = tms_notify_limit_new(1, 1, 100);
    const char *first = "11111111-0000-4000-8000-000000000001";
    CHECK_EQ_INT(tms_notify_limit_check(l, first, A, V, 1000), TMS_NOTIFY_SEND);
    /* the mail failed and the event comes back: still sent, budget untouched */
    for (int i = 0; i < 5; i++)
        CHECK_EQ_INT(tms_notify_limit_check(l, first, A, V, 1000 + (uint64_t)i), TMS_NOTIFY_SEND);
    CHECK_EQ_INT(tms_notify_limit_check(l, ev(1), A, V, 1000), TMS_NOTIFY_OVER_ASSIGNER);
    CHECK_EQ_STR(tms_notify_verdict_name(TMS_NOTIFY_OVER_ASSIGNER), "per_assigner");
    CHECK_EQ_STR(tms_notify_verdict_name(TMS_NOTIFY_OVER_RECIPIENT), "per_recipient");
    tms_notify_limit_free(&l);
    /* 0 disables */
    l = tms_notify_limit_new(0, 0, 100);
    for (int i = 0; i < 1000; i++)
        CHECK_EQ_INT(tms_notify_limit_check(l, ev(i), A, V, 1000), TMS_NOTIFY_SEND);
    tms_notify_limit_free(&l);
    tms_notify_limit_free(&l); /* NULL is fine */
}

static void test_bodies_mark_the_title(void)
{
    const char *title = "URGENT from TMS security\r\n\r\n-- TMS\nReset at http://evil";
    char *text = tms_notify_text(42, title, A);
    char *html = tms_notify_html(42, "<b>x</b> & \"y\" 'z'", "");
    CHECK(strstr(text, "assigned task 42 in TMS by user aaaaaaaaaaaaaaaaaaaaaaaa.") != NULL);
    CHECK(strstr(text, "as a TMS user wrote it (not a message from TMS):\n") != NULL);
    /* every line of the title is quoted: none can pass for TMS's own lines */
    CHECK(strstr(text, "\n> URGENT from TMS security\n>\n> -- TMS\n> Reset at http://evil\n") !=
              NULL ||
          strstr(text, "\n> URGENT from TMS security\n> \n> -- TMS\n> Reset at http://evil\n") !=
              NULL);
    CHECK(strchr(text, '\r') == NULL);
    CHECK(strstr(text, "\n-- TMS\n") != NULL);
    CHECK(strstr(html, "<b>x</b>") == NULL);
    CHECK(strstr(html, "&lt;b&gt;x&lt;/b&gt; &amp; &quot;y&quot; &#39;z&#39;") != NULL);
    CHECK(strstr(html, "<blockquote") != NULL && strstr(html, "not a message from TMS") != NULL);
    CHECK(strstr(html, "by user") == NULL); /* no assigner known */
    free(text);
    free(html);
}

/* An original system's event has no title: the mail names the task id only, as the
 * original's did. */
static void test_bodies_without_title(void)
{
    char *text = tms_notify_text(7, NULL, "");
    char *html = tms_notify_html(7, NULL, "");
    CHECK(strstr(text, "assigned task 7 in TMS.\n") != NULL);
    CHECK(strstr(text, "title") == NULL && strstr(text, "\n-- TMS\n") != NULL);
    CHECK(strstr(html, "assigned task 7 in TMS.</p>") != NULL);
    CHECK(strstr(html, "blockquote") == NULL);
    free(text);
    free(html);
}

int main(void)
{
    RUN_TEST(test_per_assigner);
    RUN_TEST(test_per_recipient);
    RUN_TEST(test_redelivery_and_off);
    RUN_TEST(test_bodies_mark_the_title);
    RUN_TEST(test_bodies_without_title);
    TEST_EXIT();
}
