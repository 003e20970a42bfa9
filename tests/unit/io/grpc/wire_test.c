/* Unit tests of the gRPC adapter's wire helpers and protobuf mapping
 * (src/io/grpc/wire.c, src/io/grpc/codec.c). */
#include <stdlib.h>
#include <string.h>

#include "auth.pb-c.h"
#include "core/api.h"
#include "core/status.h"
#include "io/grpc/codec.h"
#include "io/grpc/wire.h"
#include "task.pb-c.h"
#include "test.h"

static void test_frame_parse(void)
{
    uint8_t buf[16] = {0, 0, 0, 0, 3, 'a', 'b', 'c', 0, 0};
    tms_grpc_frame_t f;
    CHECK_EQ_INT(tms_grpc_frame_parse(buf, 4, 100, &f), 0);
    CHECK_EQ_INT(tms_grpc_frame_parse(buf, 7, 100, &f), 0);
    CHECK_EQ_INT(tms_grpc_frame_parse(buf, 8, 100, &f), 1);
    CHECK_EQ_INT(f.len, 3);
    CHECK_EQ_INT(f.consumed, 8);
    CHECK(!f.compressed && memcmp(f.data, "abc", 3) == 0);
    CHECK_EQ_INT(tms_grpc_frame_parse(buf, 8, 2, &f), -TMS_ERANGE);
    buf[0] = 2;
    CHECK_EQ_INT(tms_grpc_frame_parse(buf, 8, 100, &f), -TMS_EINVAL);
    buf[0] = 1;
    CHECK_EQ_INT(tms_grpc_frame_parse(buf, 8, 100, &f), 1);
    CHECK(f.compressed);
    /* The length alone decides "too large", before the body arrives. */
    uint8_t big[5] = {0, 0x00, 0x40, 0x00, 0x01};
    CHECK_EQ_INT(tms_grpc_frame_parse(big, 5, 4 * 1024 * 1024, &f), -TMS_ERANGE);
    uint8_t hdr[5];
    tms_grpc_frame_header(hdr, 0x01020304);
    CHECK(hdr[0] == 0 && hdr[1] == 1 && hdr[2] == 2 && hdr[3] == 3 && hdr[4] == 4);
}

static void test_timeout_parse(void)
{
    uint64_t ms = 0;
    CHECK_EQ_INT(tms_grpc_timeout_parse("1H", &ms), 0);
    CHECK_EQ_INT(ms, 3600000);
    CHECK_EQ_INT(tms_grpc_timeout_parse("2M", &ms), 0);
    CHECK_EQ_INT(ms, 120000);
    CHECK_EQ_INT(tms_grpc_timeout_parse("5S", &ms), 0);
    CHECK_EQ_INT(ms, 5000);
    CHECK_EQ_INT(tms_grpc_timeout_parse("250m", &ms), 0);
    CHECK_EQ_INT(ms, 250);
    CHECK_EQ_INT(tms_grpc_timeout_parse("1500u", &ms), 0);
    CHECK_EQ_INT(ms, 2);
    CHECK_EQ_INT(tms_grpc_timeout_parse("1n", &ms), 0);
    CHECK_EQ_INT(ms, 1);
    CHECK_EQ_INT(tms_grpc_timeout_parse("0m", &ms), 0);
    CHECK_EQ_INT(ms, 0);
    CHECK_EQ_INT(tms_grpc_timeout_parse("99999999H", &ms), 0);
    CHECK_EQ_INT(tms_grpc_timeout_parse("123456789m", &ms), -TMS_EINVAL); /* 9 digits */
    CHECK_EQ_INT(tms_grpc_timeout_parse("m", &ms), -TMS_EINVAL);
    CHECK_EQ_INT(tms_grpc_timeout_parse("10", &ms), -TMS_EINVAL);
    CHECK_EQ_INT(tms_grpc_timeout_parse("10x", &ms), -TMS_EINVAL);
    CHECK_EQ_INT(tms_grpc_timeout_parse("10mm", &ms), -TMS_EINVAL);
    CHECK_EQ_INT(tms_grpc_timeout_parse("-1S", &ms), -TMS_EINVAL);
    CHECK_EQ_INT(tms_grpc_timeout_parse("", &ms), -TMS_EINVAL);
}

static void test_percent_encode(void)
{
    char *s = tms_grpc_percent_encode("task 42 not found");
    CHECK_EQ_STR(s, "task 42 not found");
    free(s);
    s = tms_grpc_percent_encode("100% caf\xc3\xa9\n");
    CHECK_EQ_STR(s, "100%25 caf%C3%A9%0A");
    free(s);
    s = tms_grpc_percent_encode("");
    CHECK_EQ_STR(s, "");
    free(s);
}

static void test_percent_decode(void)
{
    const char *enc = "100%25 caf%C3%A9%0a";
    char *s = tms_grpc_percent_decode(enc, strlen(enc));
    CHECK_EQ_STR(s, "100% caf\xc3\xa9\n");
    free(s);
    /* Lenient: a bad or cut escape stays as it is; only len bytes are read. */
    s = tms_grpc_percent_decode("50%zz 7%4", 9);
    CHECK_EQ_STR(s, "50%zz 7%4");
    free(s);
    s = tms_grpc_percent_decode("ab%41cd", 5);
    CHECK_EQ_STR(s, "abA");
    free(s);
    char *round = tms_grpc_percent_encode("d\xc3\xa9j\xc3\xa0 100%\r\n");
    s = tms_grpc_percent_decode(round, strlen(round));
    CHECK_EQ_STR(s, "d\xc3\xa9j\xc3\xa0 100%\r\n");
    free(s);
    free(round);
}

static void test_timeout_format(void)
{
    char buf[16];
    uint64_t ms = 0;
    CHECK_EQ_STR(tms_grpc_timeout_format(0, buf), "0m");
    CHECK_EQ_STR(tms_grpc_timeout_format(123, buf), "123m");
    CHECK_EQ_STR(tms_grpc_timeout_format(99999999, buf), "99999999m");
    CHECK_EQ_STR(tms_grpc_timeout_format(100000000, buf), "100000S");
    CHECK_EQ_STR(tms_grpc_timeout_format(100000001, buf), "100001S"); /* rounded up */
    CHECK_EQ_STR(tms_grpc_timeout_format(UINT64_MAX, buf), "99999999H");
    CHECK_EQ_INT(tms_grpc_timeout_parse(tms_grpc_timeout_format(4321, buf), &ms), 0);
    CHECK_EQ_INT(ms, 4321);
}

static void test_pb_reader(void)
{
    /* field 1 varint 150, field 2 "hi", field 3 fixed32 */
    const uint8_t msg[] = {0x08, 0x96, 0x01, 0x12, 0x02, 'h', 'i', 0x1d, 1, 0, 0, 0};
    tms_pb_reader_t r;
    tms_pb_field_t f;
    tms_pb_reader_init(&r, msg, sizeof(msg));
    CHECK_EQ_INT(tms_pb_next(&r, &f), 1);
    CHECK(f.number == 1 && f.wire_type == 0 && f.varint == 150);
    CHECK_EQ_INT(tms_pb_next(&r, &f), 1);
    CHECK(f.number == 2 && f.wire_type == 2 && f.len == 2 && memcmp(f.data, "hi", 2) == 0);
    CHECK_EQ_INT(tms_pb_next(&r, &f), 1);
    CHECK(f.number == 3 && f.varint == 1);
    CHECK_EQ_INT(tms_pb_next(&r, &f), 0);
    const uint8_t bad[] = {0x12, 0x05, 'h'};
    tms_pb_reader_init(&r, bad, sizeof(bad));
    CHECK_EQ_INT(tms_pb_next(&r, &f), -TMS_EINVAL);
}

static void test_decode_update_presence(void)
{
    const tms_op_t *m =
        tms_op_by_grpc("/TaskService/UpdateTask", strlen("/TaskService/UpdateTask"));
    UpdateTaskRequest r = UPDATE_TASK_REQUEST__INIT;
    uint8_t buf[256];
    size_t n;
    tms_error_t err;
    tms_api_call_t *call;
    CHECK(m != NULL);
    r.id = "42";
    r.assignedto = ""; /* sent as "" by hand below: protobuf-c skips empty strings */
    n = update_task_request__pack(&r, buf);
    /* Append field 4 (assignedTo) with an empty value: present, meaning unassign. */
    buf[n++] = 0x22;
    buf[n++] = 0x00;
    call = tms_grpc_decode_call(m, buf, n, &err);
    CHECK(call != NULL);
    if (call) {
        CHECK_EQ_INT(call->task_id, 42);
        CHECK_EQ_STR(call->assigned_to, "");
        CHECK(call->title == NULL && call->status == NULL && call->description == NULL);
        tms_api_call_free(&call);
    }
    /* Nothing to update. */
    n = update_task_request__pack(&r, buf);
    CHECK(tms_grpc_decode_call(m, buf, n, &err) == NULL);
    CHECK_EQ_INT(err.code, TMS_INVALID_ARGUMENT);
    /* Malformed protobuf. */
    CHECK(tms_grpc_decode_call(m, (const uint8_t *)"\xff\xff", 2, &err) == NULL);
    CHECK_EQ_INT(err.code, TMS_INVALID_ARGUMENT);
}

static void test_decode_create_and_verify(void)
{
    const tms_op_t *m = tms_op_by_grpc("/TaskService/CreateTask", 23);
    CreateTaskRequest r = CREATE_TASK_REQUEST__INIT;
    uint8_t buf[256];
    size_t n;
    tms_error_t err;
    tms_api_call_t *call;
    r.title = "t";
    r.description = "d";
    n = create_task_request__pack(&r, buf);
    call = tms_grpc_decode_call(m, buf, n, &err);
    CHECK(call && call->status == NULL && call->assigned_to == NULL);
    CHECK(call && strcmp(call->title, "t") == 0);
    tms_api_call_free(&call);

    m = tms_op_by_grpc("/AuthService/VerifyToken", 24);
    call = tms_api_call_new(TMS_API_VERIFY_TOKEN);
    call->err.code = TMS_UNAUTHENTICATED;
    uint8_t *out;
    tms_status_t st = tms_grpc_encode_reply(m, call, &out, &n, &err);
    CHECK_EQ_INT(st, TMS_OK);
    VerifyTokenResponse *v = verify_token_response__unpack(NULL, n, out);
    CHECK(v && !v->valid);
    verify_token_response__free_unpacked(v, NULL);
    call->op = TMS_API_VERIFY_TOKEN;
    m = tms_op_by_grpc("/AuthService/Login", 18);
    call->err.code = TMS_UNAUTHENTICATED;
    CHECK_EQ_INT(tms_grpc_encode_reply(m, call, &out, &n, &err), TMS_OK); /* op decides */
    tms_api_call_free(&call);
    CHECK(tms_op_by_grpc("/AuthService/Nope", 17) == NULL);
}

int main(void)
{
    RUN_TEST(test_frame_parse);
    RUN_TEST(test_timeout_parse);
    RUN_TEST(test_percent_encode);
    RUN_TEST(test_percent_decode);
    RUN_TEST(test_timeout_format);
    RUN_TEST(test_pb_reader);
    RUN_TEST(test_decode_update_presence);
    RUN_TEST(test_decode_create_and_verify);
    TEST_EXIT();
}
