/* libFuzzer: every REST JSON body and query string, each wrapped in a well-formed
 * HTTP/1.1 request (right Content-Length, a live bearer token) and sent through the
 * real server of fuzz_server.h, so the fuzzer spends its time on the JSON and the
 * query parameters instead of on keeping the framing valid. The first byte picks the
 * route; the rest is the body (or, for GET /api/task, the query string). A task with
 * id 1 exists, so the :id routes reach the actor. */
#include "fuzz_server.h"

static const struct {
    const char *method, *path;
    int query, auth;
} routes[] = {
    {"POST", "/api/auth/register", 0, 0}, {"POST", "/api/auth/login", 0, 0},
    {"POST", "/api/task", 0, 1},          {"PATCH", "/api/task/1", 0, 1},
    {"GET", "/api/task", 1, 1},           {"DELETE", "/api/task/1", 0, 1},
};
#define NROUTES (sizeof routes / sizeof routes[0])

static int task_made;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *req;
    size_t n, cap;
    int r;
    if (size < 1 || size > 65536)
        return 0;
    fuzz_server_ready();
    if (!task_made) {
        static const char create[] = "{\"title\":\"one\",\"description\":\"task one\"}";
        char head[2048];
        int k = snprintf(head, sizeof head,
                         "POST /api/task HTTP/1.1\r\nHost: fuzz\r\nAuthorization: Bearer %s\r\n"
                         "Content-Length: %zu\r\n\r\n%s",
                         token, strlen(create), create);
        fuzz_server_send(head, (size_t)k);
        task_made = 1;
    }
    r = data[0] % NROUTES;
    data++;
    size--;
    if (routes[r].query && memchr(data, '\n', size))
        return 0; /* a query cannot hold a line break; llhttp would only answer 400 */
    cap = size + strlen(token) + 512;
    req = malloc(cap);
    n = (size_t)snprintf(req, cap, "%s %s%s", routes[r].method, routes[r].path,
                         routes[r].query ? "?" : "");
    if (routes[r].query) {
        memcpy(req + n, data, size);
        n += size;
    }
    n += (size_t)snprintf(req + n, cap - n, " HTTP/1.1\r\nHost: fuzz\r\n%s%s%s",
                          routes[r].auth ? "Authorization: Bearer " : "",
                          routes[r].auth ? token : "", routes[r].auth ? "\r\n" : "");
    if (!routes[r].query) {
        n +=
            (size_t)snprintf(req + n, cap - n,
                             "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n", size);
        memcpy(req + n, data, size);
        n += size;
    } else {
        n += (size_t)snprintf(req + n, cap - n, "\r\n");
    }
    fuzz_server_send(req, n);
    free(req);
    return 0;
}
