#include "io/rest.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/alloc.h"
#include "core/api.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/metrics.h"

extern const unsigned char tms_openapi_json[];
extern const unsigned long tms_openapi_json_len;

#define READY_TIMEOUT_MS 2000

struct tms_rest {
    uv_loop_t *loop;
    tms_mailbox_t *replies; /* only replies arrive here */
    tms_rest_config_t cfg;
    size_t pending;
};

/* A request waiting for the actors. Freed when the reply arrived and the timer
 * closed; req is NULL once the deadline answered the client first. */
typedef struct pending {
    uv_timer_t timer;
    tms_rest_t *rest;
    tms_http_request_t *req;
    tms_api_call_t *call;
} pending_t;

typedef struct route {
    const char *method;
    const char *path; /* a trailing ":id" matches one path segment */
    tms_api_op_t op;
    const char *name; /* route label for logs and metrics */
} route_t;

static const route_t routes[] = {
    {"POST", "/api/auth/register", TMS_API_REGISTER, "/api/auth/register"},
    {"POST", "/api/auth/login", TMS_API_LOGIN, "/api/auth/login"},
    {"POST", "/api/auth/logout", TMS_API_LOGOUT, "/api/auth/logout"},
    {"GET", "/api/auth/me", TMS_API_ME, "/api/auth/me"},
    {"DELETE", "/api/auth/delete/:id", TMS_API_DELETE_USER, "/api/auth/delete/:id"},
};
#define NROUTES (sizeof(routes) / sizeof(routes[0]))

/* ---- responses ------------------------------------------------------- */

static void respond_json(tms_http_request_t *req, int status, json_t *body,
                         const tms_http_header_t *headers, size_t nheaders)
{
    char *text = json_dumps(body, JSON_COMPACT);
    if (!text)
        tms_oom(__FILE__, __LINE__);
    tms_http_respond(req, status, headers, nheaders, "application/json", text, strlen(text));
    free(text);
    json_decref(body);
}

static json_t *user_json(const tms_user_t *u)
{
    char ts[32];
    return json_pack("{s:s, s:s, s:s, s:s}", "id", u->id, "email", u->email, "role", u->role,
                     "createdAt", tms_format_time(u->created_at_ms, ts, sizeof(ts)));
}

/* Renders a finished call: errors per API.md's table, results per route. */
static void render(tms_http_request_t *req, tms_api_call_t *call)
{
    tms_http_header_t h[5];
    char lim[24], rem[24], reset[24], retry[24];
    size_t nh = 0;
    json_t *body = NULL;
    int status = 200;

    if (call->ratelimit.applied) {
        snprintf(lim, sizeof(lim), "%u", call->ratelimit.limit);
        snprintf(rem, sizeof(rem), "%u", call->ratelimit.remaining);
        snprintf(reset, sizeof(reset), "%llu", (unsigned long long)call->ratelimit.reset_s);
        h[nh++] = (tms_http_header_t){"RateLimit-Limit", lim};
        h[nh++] = (tms_http_header_t){"RateLimit-Remaining", rem};
        h[nh++] = (tms_http_header_t){"RateLimit-Reset", reset};
    }
    if (call->err.code != TMS_OK) {
        if (call->err.code == TMS_RESOURCE_EXHAUSTED) {
            snprintf(retry, sizeof(retry), "%llu",
                     (unsigned long long)(call->ratelimit.retry_after_s
                                              ? call->ratelimit.retry_after_s
                                              : 1));
            h[nh++] = (tms_http_header_t){"Retry-After", retry};
        } else if (call->err.code == TMS_UNAUTHENTICATED) {
            h[nh++] = (tms_http_header_t){"WWW-Authenticate", "Bearer"};
        }
        tms_http_respond_error(req, call->err.code, call->err.message, h, nh);
        return;
    }
    switch (call->op) {
    case TMS_API_REGISTER:
    case TMS_API_LOGIN:
        status = call->op == TMS_API_REGISTER ? 201 : 200;
        body = json_pack("{s:s, s:o}", "token", call->token, "user", user_json(&call->user));
        break;
    case TMS_API_ME:
        body = user_json(&call->user);
        break;
    case TMS_API_LOGOUT:
    case TMS_API_DELETE_USER:
        body = json_pack("{s:b}", "success", 1);
        break;
    default:
        tms_http_respond_error(req, TMS_INTERNAL, "internal error", h, nh);
        return;
    }
    if (!body)
        tms_oom(__FILE__, __LINE__);
    respond_json(req, status, body, h, nh);
}

/* ---- calls to the gateway -------------------------------------------- */

static void on_pending_closed(uv_handle_t *handle)
{
    pending_t *p = handle->data;
    p->rest->pending--;
    free(p);
}

static void on_reply(tms_msg_t *msg)
{
    tms_api_call_t *call = (tms_api_call_t *)msg;
    pending_t *p = msg->ctx;
    if (p->req)
        render(p->req, call);
    tms_api_call_free(&call);
    uv_close((uv_handle_t *)&p->timer, on_pending_closed);
}

static void on_deadline(uv_timer_t *timer)
{
    pending_t *p = timer->data;
    tms_log_warn("deadline_exceeded", "rid=%s op=%s", p->req->request_id,
                 tms_api_op_name(p->call->op));
    tms_http_respond_error(p->req, TMS_DEADLINE_EXCEEDED, "request took too long", NULL, 0);
    p->req = NULL; /* the call is still with the actors; its reply is dropped */
}

static void send_call(tms_rest_t *rest, tms_http_request_t *req, tms_api_call_t *call)
{
    pending_t *p = tms_new(pending_t);
    tms_msg_t *msg = &call->msg;
    p->rest = rest;
    p->req = req;
    p->call = call;
    snprintf(call->request_id, sizeof(call->request_id), "%s", req->request_id);
    snprintf(call->client_addr, sizeof(call->client_addr), "%s", req->client_addr);
    call->deadline_ms = uv_now(rest->loop) + rest->cfg.call_timeout_ms;
    msg->kind = TMS_MSG_REQUEST;
    msg->reply_to = rest->replies;
    msg->cont = on_reply;
    msg->ctx = p;
    if (tms_mailbox_post(rest->cfg.gateway, &msg) != 0) {
        free(p);
        tms_api_call_free(&call);
        tms_http_respond_error(req, TMS_UNAVAILABLE, "server overloaded, retry later", NULL, 0);
        return;
    }
    rest->pending++;
    uv_timer_init(rest->loop, &p->timer);
    p->timer.data = p;
    uv_timer_start(&p->timer, on_deadline, rest->cfg.call_timeout_ms, 0);
}

/* ---- request parsing -------------------------------------------------- */

static char *bearer_token(const tms_http_request_t *req)
{
    const char *h = tms_http_header_get(req, "Authorization");
    if (!h)
        return NULL;
    if (strncasecmp(h, "Bearer ", 7) != 0)
        return tms_strdup(""); /* present but not a bearer token: invalid */
    h += 7;
    while (*h == ' ')
        h++;
    return tms_strdup(h);
}

/* Parses {email, password}; answers 400 itself and returns -1 on bad input. */
static int parse_credentials(tms_http_request_t *req, tms_api_call_t *call)
{
    json_error_t jerr;
    json_t *root, *email, *password;
    const char *problem = NULL;
    root = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        problem = "malformed JSON body";
        goto bad;
    }
    if (!json_is_object(root)) {
        problem = "request body must be a JSON object";
        goto bad;
    }
    email = json_object_get(root, "email");
    password = json_object_get(root, "password");
    if (!email || !password) {
        problem = "email and password are required";
        goto bad;
    }
    if (!json_is_string(email) || !json_is_string(password)) {
        problem = "email and password must be strings";
        goto bad;
    }
    if (strlen(json_string_value(email)) != json_string_length(email) ||
        strlen(json_string_value(password)) != json_string_length(password)) {
        problem = "email and password must not contain NUL characters";
        goto bad;
    }
    call->email = tms_strdup(json_string_value(email));
    call->password = tms_strdup(json_string_value(password));
    json_decref(root);
    return 0;
bad:
    if (root)
        json_decref(root);
    tms_http_respond_error(req, TMS_INVALID_ARGUMENT, problem, NULL, 0);
    return -1;
}

/* Matches path against a route path; a trailing ":id" captures one segment. */
static int match_path(const char *pattern, const char *path, size_t path_len, char *id,
                      size_t id_size)
{
    const char *colon = strstr(pattern, ":id");
    if (!colon)
        return strlen(pattern) == path_len && strncmp(pattern, path, path_len) == 0;
    size_t prefix = (size_t)(colon - pattern);
    if (path_len <= prefix || strncmp(pattern, path, prefix) != 0)
        return 0;
    const char *seg = path + prefix;
    size_t seg_len = path_len - prefix;
    if (memchr(seg, '/', seg_len) || seg_len >= id_size)
        return seg_len < id_size ? 0 : -1;
    memcpy(id, seg, seg_len);
    id[seg_len] = '\0';
    return 1;
}

/* ---- operations endpoints --------------------------------------------- */

typedef struct probe {
    tms_user_op_t op;
    uv_timer_t timer;
    tms_rest_t *rest;
    tms_http_request_t *req;
    int answered;
} probe_t;

static void respond_ready(tms_http_request_t *req, const char *users)
{
    int ok = strcmp(users, "ok") == 0;
    json_t *body = json_pack("{s:s, s:{s:s}}", "status", ok ? "ready" : "unavailable", "checks",
                             "users", users);
    respond_json(req, ok ? 200 : 503, body, NULL, 0);
}

static void on_probe_closed(uv_handle_t *h)
{
    probe_t *p = h->data;
    p->rest->pending--;
    free(p);
}

static void on_probe_reply(tms_msg_t *msg)
{
    probe_t *p = (probe_t *)msg;
    if (!p->answered)
        respond_ready(p->req, p->op.err.code == TMS_OK ? "ok" : "unavailable");
    uv_close((uv_handle_t *)&p->timer, on_probe_closed);
}

static void on_probe_timeout(uv_timer_t *t)
{
    probe_t *p = t->data;
    p->answered = 1;
    respond_ready(p->req, "timeout");
}

static void free_probe(tms_msg_t *msg)
{
    free(msg);
}

static void readyz(tms_rest_t *rest, tms_http_request_t *req)
{
    probe_t *p = tms_new(probe_t);
    tms_user_op_t *op = &p->op;
    p->rest = rest;
    p->req = req;
    op->msg.op = TMS_USER_PING;
    op->msg.reply_to = rest->replies;
    op->msg.cont = on_probe_reply;
    op->msg.free_fn = free_probe;
    if (tms_user_store_submit(rest->cfg.users, &op) != 0) {
        free(p);
        respond_ready(req, "overloaded");
        return;
    }
    rest->pending++;
    uv_timer_init(rest->loop, &p->timer);
    p->timer.data = p;
    uv_timer_start(&p->timer, on_probe_timeout, READY_TIMEOUT_MS, 0);
}

static int serve_operations(tms_rest_t *rest, tms_http_request_t *req, const char *path, size_t len)
{
    int get = strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0;
#define IS(p) (len == sizeof(p) - 1 && memcmp(path, p, len) == 0)
    if (IS("/healthz")) {
        req->route = "/healthz";
        if (!get)
            goto wrong_method;
        tms_http_respond(req, 200, NULL, 0, "application/json", "{\"status\":\"ok\"}", 15);
        return 1;
    }
    if (IS("/readyz")) {
        req->route = "/readyz";
        if (!get)
            goto wrong_method;
        readyz(rest, req);
        return 1;
    }
    if (IS("/metrics")) {
        size_t n;
        char *text;
        req->route = "/metrics";
        if (!get)
            goto wrong_method;
        text = tms_metrics_render(&n);
        tms_http_respond(req, 200, NULL, 0, "text/plain; version=0.0.4; charset=utf-8", text, n);
        free(text);
        return 1;
    }
    if (IS("/openapi.json")) {
        req->route = "/openapi.json";
        if (!get)
            goto wrong_method;
        tms_http_respond(req, 200, NULL, 0, "application/json", (const char *)tms_openapi_json,
                         tms_openapi_json_len);
        return 1;
    }
#undef IS
    return 0;
wrong_method : {
    tms_http_header_t allow = {"Allow", "GET, HEAD"};
    tms_http_respond_error(req, TMS_NOT_FOUND, "method not allowed on this path", &allow, 1);
    return 1;
}
}

void tms_rest_handle(void *ctx, tms_http_request_t *req)
{
    tms_rest_t *rest = ctx;
    size_t len = strlen(req->path);
    const char *path = req->path;
    const route_t *path_match = NULL;
    char id[32];

    if (len > 1 && path[len - 1] == '/')
        len--; /* Express matches with or without one trailing slash */
    if (serve_operations(rest, req, path, len))
        return;
    for (size_t i = 0; i < NROUTES; i++) {
        const route_t *r = &routes[i];
        int m = match_path(r->path, path, len, id, sizeof(id));
        if (m == 0)
            continue;
        path_match = r;
        if (strcmp(r->method, req->method) != 0)
            continue;
        req->route = r->name;
        if (m < 0) {
            tms_http_respond_error(req, TMS_INVALID_ARGUMENT, "invalid user id", NULL, 0);
            return;
        }
        tms_api_call_t *call = tms_api_call_new(r->op);
        if (r->op == TMS_API_REGISTER || r->op == TMS_API_LOGIN) {
            if (parse_credentials(req, call) != 0) {
                tms_api_call_free(&call);
                return;
            }
        } else {
            call->bearer = bearer_token(req);
        }
        if (r->op == TMS_API_DELETE_USER)
            snprintf(call->target_id, sizeof(call->target_id), "%s", id);
        send_call(rest, req, call);
        return;
    }
    if (path_match) {
        req->route = path_match->name;
        tms_http_respond_error(req, TMS_NOT_FOUND, "no route for this method and path", NULL, 0);
        return;
    }
    tms_http_respond_error(req, TMS_NOT_FOUND, "no route for this path", NULL, 0);
}

tms_rest_t *tms_rest_new(uv_loop_t *loop, const tms_rest_config_t *cfg)
{
    tms_rest_t *rest = tms_new(tms_rest_t);
    rest->loop = loop;
    rest->cfg = *cfg;
    /* Replies are not counted against a mailbox bound; 1 is only the request bound. */
    rest->replies = tms_mailbox_new(loop, "rest", 1, NULL, rest);
    return rest;
}

size_t tms_rest_pending(tms_rest_t *rest)
{
    return rest->pending;
}

void tms_rest_free(tms_rest_t **prest)
{
    tms_rest_t *rest = *prest;
    if (!rest)
        return;
    *prest = NULL;
    tms_mailbox_free(&rest->replies);
    free(rest);
}
