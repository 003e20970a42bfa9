/* The internal call codec: a call and its results survive the trip through
 * ActorCall / ActorResult unchanged (presence of optional strings included), the
 * password hash never travels, garbage is refused, and the retry flag follows the
 * op. */
#include <stdlib.h>
#include <string.h>

#include "core/api.h"
#include "core/status.h"
#include "io/grpc/internal.h"
#include "test.h"

static void test_call_round_trip(void)
{
    tms_api_call_t *c = tms_api_call_new(TMS_API_TASK_UPDATE), *d;
    uint8_t *buf;
    size_t len;
    c->msg.op = TMS_STAGE_EXECUTE;
    snprintf(c->request_id, sizeof(c->request_id), "rid-1");
    snprintf(c->client_addr, sizeof(c->client_addr), "10.0.0.1");
    c->principal.authenticated = true;
    snprintf(c->principal.user_id, sizeof(c->principal.user_id), "0123456789abcdef01234567");
    snprintf(c->principal.role, sizeof(c->principal.role), "admin");
    snprintf(c->user.id, sizeof(c->user.id), "0123456789abcdef01234567");
    snprintf(c->user.password_hash, sizeof(c->user.password_hash), "$argon2id$secret");
    c->user.token_version = 7;
    c->bearer = tms_api_call_strdup(c, "tok");
    c->task_id = 42;
    c->title = tms_api_call_strdup(c, "t\xc3\xa9");
    c->assigned_to = tms_api_call_strdup(c, ""); /* unassign: present and empty */
    c->has_if_match = true;
    c->if_match = 3;
    c->limit = 5;
    tms_internal_encode_call(c, &buf, &len);
    d = tms_internal_decode_call(buf, len); /* buf is in c's arena */
    CHECK(d != NULL);
    CHECK_EQ_INT(d->op, TMS_API_TASK_UPDATE);
    CHECK_EQ_INT(d->msg.op, TMS_STAGE_EXECUTE);
    CHECK_EQ_STR(d->request_id, "rid-1");
    CHECK_EQ_STR(d->client_addr, "10.0.0.1");
    CHECK(d->principal.authenticated);
    CHECK_EQ_STR(d->principal.role, "admin");
    CHECK_EQ_STR(d->user.id, c->user.id);
    CHECK_EQ_INT(d->user.token_version, 7);
    CHECK_EQ_STR(d->user.password_hash, "");
    CHECK_EQ_STR(d->bearer, "tok");
    CHECK_EQ_INT(d->task_id, 42);
    CHECK_EQ_STR(d->title, "t\xc3\xa9");
    CHECK(d->description == NULL);
    CHECK(d->status == NULL);
    CHECK(d->assigned_to != NULL && d->assigned_to[0] == '\0');
    CHECK(d->has_if_match);
    CHECK_EQ_INT(d->if_match, 3);
    CHECK_EQ_INT(d->limit, 5);
    CHECK(d->email == NULL && d->password == NULL && d->cursor == NULL);
    tms_api_call_free(&c);
    tms_api_call_free(&d);
}

static void test_result_round_trip(void)
{
    tms_api_call_t *c = tms_api_call_new(TMS_API_TASK_LIST),
                   *d = tms_api_call_new(TMS_API_TASK_LIST);
    uint8_t *buf;
    size_t len;
    c->err.code = TMS_OK;
    c->ntasks = 2;
    c->tasks = tms_arena_calloc(&c->arena, 2, sizeof(*c->tasks));
    for (int i = 0; i < 2; i++) {
        c->tasks[i].id = i + 1;
        c->tasks[i].title = tms_api_call_strdup(c, i ? "two" : "one");
        c->tasks[i].description = tms_api_call_strdup(c, "d");
        snprintf(c->tasks[i].status, sizeof(c->tasks[i].status), "open");
        c->tasks[i].version = 1;
    }
    c->next_cursor = tms_api_call_strdup(c, "cur");
    c->ratelimit.applied = true;
    c->ratelimit.remaining = 9;
    tms_internal_encode_result(c, &buf, &len);
    CHECK_EQ_INT(tms_internal_decode_result(d, buf, len), 0); /* buf is in c's arena */
    CHECK_EQ_INT(d->err.code, TMS_OK);
    CHECK_EQ_INT(d->ntasks, 2);
    CHECK_EQ_STR(d->tasks[1].title, "two");
    CHECK_EQ_INT(d->tasks[1].id, 2);
    CHECK(d->task.title == NULL);
    CHECK_EQ_STR(d->next_cursor, "cur");
    CHECK(d->token == NULL);
    CHECK(d->ratelimit.applied);
    CHECK_EQ_INT(d->ratelimit.remaining, 9);
    tms_api_call_free(&c);

    /* a domain error with a token-less, task-less answer */
    c = tms_api_call_new(TMS_API_TASK_GET);
    tms_error_set(&c->err, TMS_NOT_FOUND, "task 9 not found");
    tms_internal_encode_result(c, &buf, &len);
    CHECK_EQ_INT(tms_internal_decode_result(d, buf, len), 0); /* buf is in c's arena */
    CHECK_EQ_INT(d->err.code, TMS_NOT_FOUND);
    CHECK_EQ_STR(d->err.message, "task 9 not found");
    CHECK_EQ_INT(d->ntasks, 0);
    CHECK(d->next_cursor == NULL);
    /* a role elsewhere applies no limit: the gateway's count stays for the headers */
    CHECK(d->ratelimit.applied);
    CHECK_EQ_INT(d->ratelimit.remaining, 9);
    tms_api_call_free(&c);
    tms_api_call_free(&d);
}

static void test_garbage_and_idempotency(void)
{
    const uint8_t junk[] = {0xff, 0xff, 0xff, 0x01};
    const uint8_t bad_op[] = {0x08, 0x63, 0x10, 0x02}; /* op=99 stage=2 */
    tms_api_call_t *c;
    CHECK(tms_internal_decode_call(junk, sizeof(junk)) == NULL);
    CHECK(tms_internal_decode_call(bad_op, sizeof(bad_op)) == NULL);
    c = tms_api_call_new(TMS_API_TASK_GET);
    CHECK_EQ_INT(tms_internal_decode_result(c, junk, sizeof(junk)), -TMS_EINVAL);
    c->msg.op = TMS_STAGE_EXECUTE;
    CHECK(tms_internal_idempotent(c));
    c->op = TMS_API_TASK_CREATE;
    CHECK(!tms_internal_idempotent(c));
    c->msg.op = TMS_STAGE_AUTHENTICATE; /* token check before the create: a read */
    CHECK(tms_internal_idempotent(c));
    c->msg.op = TMS_STAGE_EXECUTE;
    c->op = TMS_API_LOGIN; /* bumps the token version */
    CHECK(!tms_internal_idempotent(c));
    tms_api_call_free(&c);
}

int main(void)
{
    RUN_TEST(test_call_round_trip);
    RUN_TEST(test_result_round_trip);
    RUN_TEST(test_garbage_and_idempotency);
    TEST_EXIT();
}
