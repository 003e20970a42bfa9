/* CORS origins: an exact match of scheme, host and port (case aside), "*" for any;
 * preflight detection; the headers a listed origin's responses get, none otherwise. */
#include <string.h>

#include "io/http/cors.h"
#include "test.h"

static void test_allowed(void)
{
    const char *list = "https://app.example.com, http://localhost:8080";
    CHECK(tms_cors_allowed(list, "https://app.example.com"));
    CHECK(tms_cors_allowed(list, "HTTPS://App.Example.com"));
    CHECK(tms_cors_allowed(list, "http://localhost:8080"));
    CHECK(!tms_cors_allowed(list, "http://localhost"));
    CHECK(!tms_cors_allowed(list, "http://app.example.com"));
    CHECK(!tms_cors_allowed(list, "https://app.example.com.evil"));
    CHECK(!tms_cors_allowed(list, "https://app.example"));
    CHECK(!tms_cors_allowed(list, ""));
    CHECK(!tms_cors_allowed(list, NULL));
    CHECK(!tms_cors_allowed("", "https://app.example.com"));
    CHECK(!tms_cors_allowed(NULL, "https://app.example.com"));
    CHECK(tms_cors_allowed("*", "null"));
}

static void test_headers(void)
{
    tms_http_header_t h[4] = {{"Origin", "https://a.example"},
                              {"Access-Control-Request-Method", "POST"}};
    tms_http_header_t out[TMS_CORS_RESPONSE_HEADERS];
    tms_http_request_t req;
    memset(&req, 0, sizeof(req));
    req.method = "OPTIONS";
    req.headers = h;
    req.nheaders = 2;
    CHECK(tms_cors_is_preflight(&req));
    CHECK_EQ_INT((int)tms_cors_response("https://a.example", &req, out), 3);
    CHECK_EQ_STR(out[0].value, "https://a.example");
    CHECK(strstr(out[2].value, "ETag") && strstr(out[2].value, "RateLimit-Remaining"));
    CHECK_EQ_INT((int)tms_cors_response("https://b.example", &req, out), 0);
    req.nheaders = 1; /* no Access-Control-Request-Method: an ordinary OPTIONS */
    CHECK(!tms_cors_is_preflight(&req));
    req.method = "GET";
    req.nheaders = 2;
    CHECK(!tms_cors_is_preflight(&req));
    req.nheaders = 0;
    CHECK_EQ_INT((int)tms_cors_response("*", &req, out), 0);
}

int main(void)
{
    RUN_TEST(test_allowed);
    RUN_TEST(test_headers);
    TEST_EXIT();
}
