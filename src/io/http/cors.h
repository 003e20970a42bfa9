/* CORS for browser pages on other origins (http.cors_origins): a preflight (OPTIONS with
 * Origin and Access-Control-Request-Method) from a listed origin is answered 204 with
 * the methods and request headers the API takes, from any other origin 403; every other
 * response to a listed origin carries Access-Control-Allow-Origin (the origin itself,
 * with Vary: Origin) and Access-Control-Expose-Headers for what scripts read (ETag,
 * Location, Link, Retry-After, RateLimit-*, X-Request-Id). No cookies are used, so no
 * credentials are allowed. The origin list is the setting as written, checked by
 * core/config.c: "*", or scheme://host[:port] separated by commas. */
#ifndef TMS_IO_HTTP_CORS_H
#define TMS_IO_HTTP_CORS_H

#include <stdbool.h>
#include <stddef.h>

#include "io/http/http1.h"

#define TMS_CORS_RESPONSE_HEADERS 3  /* at most this many from tms_cors_response */
#define TMS_CORS_PREFLIGHT_HEADERS 3 /* at most this many from tms_cors_preflight */

/** True when origin (an Origin header's value) is in origins ("*": any). Scheme and
 * host compare without regard to case. O(strlen(origins)). */
bool tms_cors_allowed(const char *origins, const char *origin);

/** True when req is a CORS preflight: OPTIONS with Origin and
 * Access-Control-Request-Method. */
bool tms_cors_is_preflight(const tms_http_request_t *req);

/** The headers any response to req gets (into out, which has room for
 * TMS_CORS_RESPONSE_HEADERS; values point into req or are static): none when req has no
 * Origin or its origin is not allowed. Returns their number. */
size_t tms_cors_response(const char *origins, const tms_http_request_t *req,
                         tms_http_header_t *out);

/** The headers a preflight's 204 adds to tms_cors_response's (room for
 * TMS_CORS_PREFLIGHT_HEADERS; static values). */
size_t tms_cors_preflight(tms_http_header_t *out);

#endif
