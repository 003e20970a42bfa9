/* The client behind trusted proxies: the rightmost hop that is not a trusted proxy, from
 * X-Forwarded-For (several fields in order) or Forwarded; headers from other peers are
 * ignored; garbage stops the walk. */
#include <string.h>

#include "io/http/forwarded.h"
#include "test.h"

static const char *client(const char *peer, const char *trusted, const char *const *headers)
{
    static char out[64];
    tms_http_header_t h[8];
    tms_http_request_t req;
    tms_cidr_list_t list;
    char err[200];
    size_t n = 0;
    memset(&req, 0, sizeof(req));
    for (; headers && headers[2 * n]; n++)
        h[n] = (tms_http_header_t){headers[2 * n], headers[2 * n + 1]};
    req.headers = h;
    req.nheaders = n;
    CHECK_EQ_INT(tms_cidr_list_parse(trusted, &list, err, sizeof(err)), 0);
    tms_http_forwarded_client(&req, peer, &list, out, sizeof(out));
    return out;
}

static void test_xff(void)
{
    const char *one[] = {"X-Forwarded-For", "203.0.113.9", NULL};
    const char *spoof[] = {"X-Forwarded-For", "1.1.1.1, 203.0.113.9", NULL};
    const char *chain[] = {"X-Forwarded-For", "1.1.1.1, 203.0.113.9, 10.0.0.2", NULL};
    const char *split[] = {"X-Forwarded-For", "1.1.1.1", "x-forwarded-for", "203.0.113.9", NULL};
    const char *junk[] = {"X-Forwarded-For", "203.0.113.9, unknown, 10.0.0.2", NULL};
    const char *v6[] = {"X-Forwarded-For", "[2001:db8::7]:4711", NULL};
    const char *port[] = {"X-Forwarded-For", "203.0.113.9:5555", NULL};
    CHECK_EQ_STR(client("10.0.0.1", "10.0.0.0/8", one), "203.0.113.9");
    /* the client wrote 1.1.1.1 itself; our proxy appended what it saw */
    CHECK_EQ_STR(client("10.0.0.1", "10.0.0.0/8", spoof), "203.0.113.9");
    CHECK_EQ_STR(client("10.0.0.1", "10.0.0.0/8", chain), "203.0.113.9");
    CHECK_EQ_STR(client("10.0.0.1", "10.0.0.0/8", split), "203.0.113.9");
    CHECK_EQ_STR(client("10.0.0.1", "10.0.0.0/8", junk), "10.0.0.2");
    CHECK_EQ_STR(client("10.0.0.1", "10.0.0.0/8", v6), "2001:db8::7");
    CHECK_EQ_STR(client("10.0.0.1", "10.0.0.0/8", port), "203.0.113.9");
    /* not from a trusted proxy: the headers are the client's word, ignored */
    CHECK_EQ_STR(client("192.0.2.5", "10.0.0.0/8", one), "192.0.2.5");
    CHECK_EQ_STR(client("10.0.0.1", "", one), "10.0.0.1");
    /* a trusted peer without the header is the client */
    CHECK_EQ_STR(client("10.0.0.1", "10.0.0.0/8", NULL), "10.0.0.1");
    /* an IPv4 client on a dual-stack listener */
    CHECK_EQ_STR(client("::ffff:10.0.0.1", "10.0.0.0/8", one), "203.0.113.9");
}

static void test_forwarded(void)
{
    const char *fwd[] = {"Forwarded", "for=1.1.1.1, for=\"[2001:db8::1]:80\";proto=https", NULL};
    const char *both[] = {"Forwarded", "for=198.51.100.1", "X-Forwarded-For", "203.0.113.9", NULL};
    const char *hidden[] = {"Forwarded", "for=_hidden, for=198.51.100.1", NULL};
    CHECK_EQ_STR(client("10.0.0.1", "10.0.0.0/8", fwd), "2001:db8::1");
    CHECK_EQ_STR(client("10.0.0.1", "10.0.0.0/8", both), "203.0.113.9"); /* XFF first */
    CHECK_EQ_STR(client("10.0.0.1", "10.0.0.0/8", hidden), "198.51.100.1");
}

int main(void)
{
    RUN_TEST(test_xff);
    RUN_TEST(test_forwarded);
    TEST_EXIT();
}
