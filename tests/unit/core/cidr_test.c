/* CIDR lists (grpc.trusted_peers): what parses, what is refused and why, and which
 * client addresses match. */
#include <string.h>

#include "core/cidr.h"
#include "test.h"

static void test_parse(void)
{
    tms_cidr_list_t l;
    char err[200];
    CHECK_EQ_INT(tms_cidr_list_parse("", &l, err, sizeof(err)), 0);
    CHECK_EQ_INT(l.n, 0);
    CHECK_EQ_INT(tms_cidr_list_parse(" 10.0.0.0/8,192.0.2.7 , fd00::/8\t::1 0.0.0.0/0", &l, err,
                                     sizeof(err)),
                 0);
    CHECK_EQ_INT(l.n, 5);
    CHECK_EQ_INT(l.v[0].bits, 8);
    CHECK_EQ_INT(l.v[1].bits, 32); /* a bare address is one host */
    CHECK_EQ_INT(l.v[2].bits, 8);
    CHECK_EQ_INT(l.v[3].bits, 128);
    CHECK_EQ_INT(l.v[4].bits, 0);

    CHECK(tms_cidr_list_parse("10.0.0.0/8, bogus", &l, err, sizeof(err)) < 0);
    CHECK_EQ_STR(err, "\"bogus\" is not an IPv4 or IPv6 address or CIDR range");
    CHECK(tms_cidr_list_parse("10.0.0.0/33", &l, err, sizeof(err)) < 0);
    CHECK_EQ_STR(err, "\"10.0.0.0/33\": the prefix length must be 0 to 32");
    CHECK(tms_cidr_list_parse("fd00::/129", &l, err, sizeof(err)) < 0);
    CHECK(tms_cidr_list_parse("10.0.0.0/", &l, err, sizeof(err)) < 0);
    CHECK(tms_cidr_list_parse("10.0.0.0/x", &l, err, sizeof(err)) < 0);
    CHECK(tms_cidr_list_parse("10.0.0.0/-1", &l, err, sizeof(err)) < 0);
    CHECK(tms_cidr_list_parse("10.0.0.1/8", &l, err, sizeof(err)) < 0);
    CHECK_EQ_STR(err, "\"10.0.0.1/8\" has bits set beyond its /8 prefix (10.0.0.0/8?)");
    CHECK(tms_cidr_list_parse("fd00::1/64", &l, err, sizeof(err)) < 0);
    CHECK(strstr(err, "(fd00::/64?)") != NULL);
    CHECK(tms_cidr_list_parse("127.0.0.1:50051", &l, err, sizeof(err)) < 0);
    {
        char many[TMS_CIDR_MAX * 12 + 16] = "";
        for (int i = 0; i <= TMS_CIDR_MAX; i++)
            snprintf(many + strlen(many), sizeof(many) - strlen(many), "10.0.%d.1 ", i);
        CHECK(tms_cidr_list_parse(many, &l, err, sizeof(err)) < 0);
        CHECK_EQ_STR(err, "more than 64 ranges");
    }
}

static void test_match(void)
{
    tms_cidr_list_t l;
    char err[200];
    CHECK_EQ_INT(tms_cidr_list_parse("127.0.0.2, 10.1.0.0/16, fd00:1::/32", &l, err, sizeof(err)),
                 0);
    CHECK(tms_cidr_list_match(&l, "127.0.0.2"));
    CHECK(!tms_cidr_list_match(&l, "127.0.0.1"));
    CHECK(tms_cidr_list_match(&l, "::ffff:127.0.0.2")); /* IPv4 on a dual-stack socket */
    CHECK(tms_cidr_list_match(&l, "10.1.255.3"));
    CHECK(!tms_cidr_list_match(&l, "10.2.0.1"));
    CHECK(tms_cidr_list_match(&l, "fd00:1:ffff::9"));
    CHECK(!tms_cidr_list_match(&l, "fd00:2::9"));
    CHECK(!tms_cidr_list_match(&l, "::1"));
    CHECK(!tms_cidr_list_match(&l, ""));
    CHECK(!tms_cidr_list_match(&l, "not an address"));
    CHECK(!tms_cidr_list_match(&l, NULL));
    CHECK_EQ_INT(tms_cidr_list_parse("10.128.0.0/9", &l, err, sizeof(err)), 0);
    CHECK(tms_cidr_list_match(&l, "10.200.0.1"));
    CHECK(!tms_cidr_list_match(&l, "10.127.0.1"));
    CHECK_EQ_INT(tms_cidr_list_parse("", &l, err, sizeof(err)), 0);
    CHECK(!tms_cidr_list_match(&l, "127.0.0.2")); /* empty: nobody is trusted */
    CHECK_EQ_INT(tms_cidr_list_parse("0.0.0.0/0", &l, err, sizeof(err)), 0);
    CHECK(tms_cidr_list_match(&l, "203.0.113.9"));
    CHECK(!tms_cidr_list_match(&l, "2001:db8::1")); /* IPv4 ranges match IPv4 only */
}

int main(void)
{
    RUN_TEST(test_parse);
    RUN_TEST(test_match);
    TEST_EXIT();
}
