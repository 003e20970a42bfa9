/* CORS (http.cors_origins); see cors.h. */
#include "io/http/cors.h"

#include <string.h>
#include <strings.h>

/* What a page's script may send (Access-Control-Allow-Headers) and read
 * (Access-Control-Expose-Headers) beyond the CORS-safelisted ones. */
#define ALLOW_METHODS "GET, POST, PATCH, DELETE"
#define ALLOW_HEADERS                                                                              \
    "Authorization, Content-Type, If-Match, If-None-Match, Idempotency-Key, Last-Event-ID, "       \
    "X-Request-Id"
#define EXPOSE_HEADERS                                                                             \
    "ETag, Location, Link, Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, "   \
    "X-Request-Id"
#define MAX_AGE "600" /* seconds a browser may keep a preflight's answer */

bool tms_cors_allowed(const char *origins, const char *origin)
{
    const char *p = origins;
    size_t olen;
    if (!origins || !origins[0] || !origin || !origin[0])
        return false;
    if (strcmp(origins, "*") == 0)
        return true;
    olen = strlen(origin);
    while (*p) {
        size_t n = strcspn(p, ",");
        const char *o = p;
        while (n && *o == ' ')
            o++, n--;
        while (n && o[n - 1] == ' ')
            n--;
        if (n == olen && strncasecmp(o, origin, n) == 0)
            return true;
        p += strcspn(p, ",");
        if (*p == ',')
            p++;
    }
    return false;
}

bool tms_cors_is_preflight(const tms_http_request_t *req)
{
    return req->method && strcmp(req->method, "OPTIONS") == 0 &&
           tms_http_header_get(req, "Origin") &&
           tms_http_header_get(req, "Access-Control-Request-Method");
}

size_t tms_cors_response(const char *origins, const tms_http_request_t *req, tms_http_header_t *out)
{
    const char *origin = tms_http_header_get(req, "Origin");
    if (!tms_cors_allowed(origins, origin))
        return 0;
    out[0] = (tms_http_header_t){"Access-Control-Allow-Origin", origin};
    out[1] = (tms_http_header_t){"Vary", "Origin"};
    out[2] = (tms_http_header_t){"Access-Control-Expose-Headers", EXPOSE_HEADERS};
    return 3;
}

size_t tms_cors_preflight(tms_http_header_t *out)
{
    out[0] = (tms_http_header_t){"Access-Control-Allow-Methods", ALLOW_METHODS};
    out[1] = (tms_http_header_t){"Access-Control-Allow-Headers", ALLOW_HEADERS};
    out[2] = (tms_http_header_t){"Access-Control-Max-Age", MAX_AGE};
    return 3;
}
