/* Event shapes of API.md: build, parse back, and never leak a password hash. */
#include "core/events.h"
#include "test.h"

static void test_event_id(void)
{
    char a[37], b[37];
    tms_event_id_new(a);
    tms_event_id_new(b);
    CHECK_EQ_INT(strlen(a), 36);
    CHECK(a[8] == '-' && a[13] == '-' && a[14] == '4' && a[18] == '-' && a[23] == '-');
    CHECK(strcmp(a, b) != 0);
}

static void test_notification_roundtrip(void)
{
    char type[16], user[25], eid[37], by[25] = "x", *title = NULL;
    int64_t task = 0;
    char *json = tms_event_notification_json("task_assigned", "0123456789abcdef01234567", 42,
                                             "e1e1e1e1-0000-4000-8000-000000000000", "T\"itle\n",
                                             1764338400123, "aaaaaaaaaaaaaaaaaaaaaaaa");
    CHECK(strstr(json, "\"task_id\":\"42\"") != NULL);
    CHECK(strstr(json, "\"occurred_at\":\"2025-11-28T14:00:00.123Z\"") != NULL);
    CHECK_EQ_INT(tms_event_notification_parse(json, type, user, &task, eid, &title, by), 0);
    CHECK_EQ_STR(type, "task_assigned");
    CHECK_EQ_STR(user, "0123456789abcdef01234567");
    CHECK_EQ_INT(task, 42);
    CHECK_EQ_STR(title, "T\"itle\n");
    CHECK_EQ_STR(by, "aaaaaaaaaaaaaaaaaaaaaaaa");
    free(title);
    free(json);
    /* the original's shape (no assigned_by) still parses, with "" */
    json = tms_event_notification_json("task_created", "0123456789abcdef01234567", 7,
                                       "e1e1e1e1-0000-4000-8000-000000000001", "t", 0, NULL);
    CHECK(strstr(json, "assigned_by") == NULL);
    CHECK_EQ_INT(tms_event_notification_parse(json, type, user, &task, eid, &title, by), 0);
    CHECK_EQ_STR(by, "");
    free(title);
    free(json);
    CHECK_EQ_INT(tms_event_notification_parse(
                     "{\"type\":\"task_created\",\"user_id\":\"u\",\"task_id\":\"1\","
                     "\"event_id\":\"e\",\"title\":\"t\",\"assigned_by\":5}",
                     type, user, &task, eid, &title, by),
                 -1);
    CHECK_EQ_INT(tms_event_notification_parse("{}", type, user, &task, eid, &title, NULL), -1);
    CHECK(tms_event_notification_parse("not json", type, user, &task, eid, &title, NULL) != 0);
}

static void test_user_roundtrip(void)
{
    tms_user_t u = {.id = "0123456789abcdef01234567",
                    .email = "a@b.c",
                    .role = "admin",
                    .password_hash = "$argon2id$secret",
                    .token_version = 7,
                    .created_at_ms = 1764338400123};
    tms_user_t back;
    char eid[37];
    char *json = tms_event_user_json(&u, "e2e2e2e2-0000-4000-8000-000000000000");
    CHECK(strstr(json, "argon2") == NULL);
    CHECK(strstr(json, "\"tokenVersion\":7") != NULL);
    CHECK_EQ_INT(tms_event_user_parse(json, &back, eid), 0);
    CHECK_EQ_STR(back.id, u.id);
    CHECK_EQ_STR(back.email, u.email);
    CHECK_EQ_STR(back.role, u.role);
    CHECK_EQ_INT(back.token_version, 7);
    CHECK_EQ_INT(back.created_at_ms, u.created_at_ms);
    CHECK_EQ_STR(eid, "e2e2e2e2-0000-4000-8000-000000000000");
    CHECK_EQ_STR(back.password_hash, "");
    free(json);
    CHECK(tms_event_user_parse("{\"user\":{}}", &back, eid) != 0);
}

/* The original system's producers: no event_id, no title, a password hash in the user
 * (issue 21). They parse, with "" for the event id and no title. */
static void test_original_shapes(void)
{
    char type[16], user[25], eid[37] = "x", by[25] = "x", *title = (char *)"x";
    int64_t task = 0;
    tms_user_t back;
    CHECK_EQ_INT(tms_event_notification_parse("{\"type\":\"task_created\",\"user_id\":"
                                              "\"0123456789abcdef01234567\",\"task_id\":\"12\"}",
                                              type, user, &task, eid, &title, by),
                 0);
    CHECK_EQ_STR(type, "task_created");
    CHECK_EQ_STR(user, "0123456789abcdef01234567");
    CHECK_EQ_INT(task, 12);
    CHECK_EQ_STR(eid, "");
    CHECK(title == NULL);
    CHECK_EQ_STR(by, "");
    /* an event_id that is there must be a non-empty string */
    CHECK_EQ_INT(tms_event_notification_parse("{\"type\":\"task_created\",\"user_id\":\"u\","
                                              "\"task_id\":\"1\",\"event_id\":\"\"}",
                                              type, user, &task, eid, &title, NULL),
                 -1);
    CHECK_EQ_INT(tms_event_notification_parse("{\"type\":\"task_created\",\"user_id\":\"u\","
                                              "\"task_id\":\"1\",\"event_id\":7}",
                                              type, user, &task, eid, &title, NULL),
                 -1);
    CHECK_EQ_INT(tms_event_notification_parse("{\"type\":\"task_created\",\"user_id\":\"u\","
                                              "\"task_id\":\"1\",\"title\":3}",
                                              type, user, &task, eid, &title, NULL),
                 -1);
    CHECK_EQ_INT(
        tms_event_user_parse("{\"user\":{\"id\":\"0123456789abcdef01234567\",\"email\":\"a@b.c\","
                             "\"password\":\"$2a$10$abcdefghijklmnopqrstuv\",\"role\":\"user\","
                             "\"tokenVersion\":3,\"createdAt\":\"2025-02-20T08:53:10.123Z\"}}",
                             &back, eid),
        0);
    CHECK_EQ_STR(back.id, "0123456789abcdef01234567");
    CHECK_EQ_INT(back.token_version, 3);
    CHECK_EQ_STR(back.password_hash, "");
    CHECK_EQ_STR(eid, "");
}

/* A derived id: stable for the same topic and JSON (whatever its key order and
 * spacing), different for another payload or topic, UUID-shaped, never a v4. */
static void test_event_id_derive(void)
{
    const char *a = "{\"type\":\"task_created\",\"user_id\":\"u1\",\"task_id\":\"5\"}";
    const char *a2 = "{ \"task_id\": \"5\", \"type\": \"task_created\", \"user_id\": \"u1\" }";
    const char *b = "{\"type\":\"task_created\",\"user_id\":\"u1\",\"task_id\":\"6\"}";
    char x[37], y[37], z[37], w[37], v[37];
    tms_event_id_derive("notifications", a, strlen(a), x);
    tms_event_id_derive("notifications", a2, strlen(a2), y);
    tms_event_id_derive("notifications", b, strlen(b), z);
    tms_event_id_derive("user_deleted", a, strlen(a), w);
    tms_event_id_derive("notifications", "not json", 8, v);
    CHECK_EQ_STR(x, y);
    CHECK(strcmp(x, z) != 0);
    CHECK(strcmp(x, w) != 0);
    CHECK(strcmp(x, v) != 0);
    CHECK_EQ_INT(strlen(x), 36);
    CHECK(x[8] == '-' && x[13] == '-' && x[14] == '8' && x[18] == '-' && x[23] == '-');
    CHECK(strchr("89ab", x[19]) != NULL);
}

int main(void)
{
    RUN_TEST(test_original_shapes);
    RUN_TEST(test_event_id_derive);
    RUN_TEST(test_event_id);
    RUN_TEST(test_notification_roundtrip);
    RUN_TEST(test_user_roundtrip);
    TEST_EXIT();
}
