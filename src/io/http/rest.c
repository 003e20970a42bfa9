#include "io/http/rest.h"

#include <ctype.h>
#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/alloc.h"
#include "core/api.h"
#include "core/clock.h"
#include "core/deadlines.h"
#include "core/jsonw.h"
#include "core/log.h"
#include "core/push.h"
#include "core/metrics.h"
#include "core/text.h"

extern const unsigned char tms_openapi_json[];
extern const unsigned long tms_openapi_json_len;

#define READY_TIMEOUT_MS 2000

struct tms_rest {
    uv_loop_t *loop;
    tms_mailbox_t *replies; /* only replies arrive here */
    tms_rest_config_t cfg;
    size_t pending;
    bool metrics_public; /* /metrics served here, to the holder of metrics_token */
    unsigned char metrics_token_hash[crypto_generichash_BYTES];
    void (*drained)(void *arg); /* tms_rest_drain: called once pending reaches 0 */
    void *drained_arg;
    tms_deadlines_t *deadlines; /* of the calls whose client still waits: one timer */
};

static void less_pending(tms_rest_t *rest)
{
    void (*cb)(void *) = rest->drained;
    if (--rest->pending == 0 && cb) {
        rest->drained = NULL;
        cb(rest->drained_arg);
    }
}

/* A request waiting for the actors, in the call's arena. The call is freed (and this
 * with it) when the reply arrives; req is NULL once the deadline answered the client
 * first (and it is then off the rest's list). */
typedef struct pending {
    tms_deadline_t deadline; /* first member; on rest->deadlines while req is set */
    tms_rest_t *rest;
    tms_http_request_t *req;
    tms_api_call_t *call;
} pending_t;

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

/* A task as a jansson value, for the bodies built as trees (the SSE events). */
static json_t *task_json(const tms_task_t *t)
{
    char id[24], created[32], updated[32];
    snprintf(id, sizeof(id), "%lld", (long long)t->id);
    return json_pack("{s:s, s:s, s:s, s:s, s:o, s:s, s:s, s:s, s:I}", "id", id, "title",
                     t->title ? t->title : "", "description", t->description ? t->description : "",
                     "status", t->status, "assignedTo",
                     t->assigned_to[0] ? json_string(t->assigned_to) : json_null(), "createdBy",
                     t->created_by, "createdAt",
                     tms_format_time(t->created_at_ms, created, sizeof(created)), "updatedAt",
                     tms_format_time(t->updated_at_ms, updated, sizeof(updated)), "version",
                     (json_int_t)t->version);
}

/* Bytes put_task may write for t. */
static size_t task_bound(const tms_task_t *t)
{
    return 160 + 2 * 25 + TMS_JSONW_INT_MAX * 2 +
           tms_jsonw_string_bound(t->title ? strlen(t->title) : 0) +
           tms_jsonw_string_bound(t->description ? strlen(t->description) : 0) +
           tms_jsonw_string_bound(sizeof(t->status)) +
           tms_jsonw_string_bound(sizeof(t->assigned_to)) +
           tms_jsonw_string_bound(sizeof(t->created_by));
}

/* API.md's task, written straight into p (issue 19: no document tree). */
static char *put_task(char *p, const tms_task_t *t)
{
    char ts[32];
    p = tms_jsonw_lit(p, "{\"id\":\"");
    p = tms_jsonw_int(p, t->id);
    p = tms_jsonw_lit(p, "\",\"title\":");
    p = tms_jsonw_string(p, t->title ? t->title : "", t->title ? strlen(t->title) : 0);
    p = tms_jsonw_lit(p, ",\"description\":");
    p = tms_jsonw_string(p, t->description ? t->description : "",
                         t->description ? strlen(t->description) : 0);
    p = tms_jsonw_lit(p, ",\"status\":");
    p = tms_jsonw_string_or_null(p, t->status);
    p = tms_jsonw_lit(p, ",\"assignedTo\":");
    p = tms_jsonw_string_or_null(p, t->assigned_to[0] ? t->assigned_to : NULL);
    p = tms_jsonw_lit(p, ",\"createdBy\":");
    p = tms_jsonw_string_or_null(p, t->created_by);
    p = tms_jsonw_lit(p, ",\"createdAt\":");
    p = tms_jsonw_string_or_null(p, tms_format_time(t->created_at_ms, ts, sizeof(ts)));
    p = tms_jsonw_lit(p, ",\"updatedAt\":");
    p = tms_jsonw_string_or_null(p, tms_format_time(t->updated_at_ms, ts, sizeof(ts)));
    p = tms_jsonw_lit(p, ",\"version\":");
    p = tms_jsonw_int(p, t->version);
    *p++ = '}';
    return p;
}

/* A task or a page of tasks, written into the call's arena (no allocation of its own)
 * and answered. */
static void respond_tasks(tms_http_request_t *req, tms_api_call_t *call, int status,
                          const tms_http_header_t *headers, size_t nheaders, bool list)
{
    size_t cap = 64, n = list ? call->ntasks : 1;
    const tms_task_t *tasks = list ? call->tasks : &call->task;
    char *body, *p;
    for (size_t i = 0; i < n; i++)
        cap += task_bound(&tasks[i]) + 1;
    if (list && call->next_cursor)
        cap += tms_jsonw_string_bound(strlen(call->next_cursor));
    p = body = tms_arena_alloc(&call->arena, cap);
    if (!list) {
        p = put_task(p, &call->task);
    } else {
        p = tms_jsonw_lit(p, "{\"tasks\":[");
        for (size_t i = 0; i < n; i++) {
            if (i)
                *p++ = ',';
            p = put_task(p, &tasks[i]);
        }
        p = tms_jsonw_lit(p, "],\"nextCursor\":");
        p = tms_jsonw_string_or_null(p, call->next_cursor);
        *p++ = '}';
    }
    tms_http_respond(req, status, headers, nheaders, "application/json", body, (size_t)(p - body));
}

/* Renders a finished call: errors per API.md's table, results per the shape of the
 * operation's result and with its success status (core/ops.h). */
/* Does an If-None-Match field value ("3", W/"3", a list of them, or *) name etag? */
static bool etag_matches(const char *field, const char *etag)
{
    const char *p = field;
    size_t n = strlen(etag);
    while (*p) {
        size_t len;
        p += strspn(p, " \t,");
        if (*p == '*')
            return true;
        if (strncmp(p, "W/", 2) == 0)
            p += 2;
        len = strcspn(p, " \t,");
        if (len == n && memcmp(p, etag, n) == 0)
            return true;
        p += len;
    }
    return false;
}

/* Percent-encodes s for a query value into buf[size) (cut to fit). */
static void query_encode(char *buf, size_t size, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (; *s && o + 4 < size; s++) {
        unsigned char c = (unsigned char)*s;
        if (isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
            buf[o++] = (char)c;
        } else {
            buf[o++] = '%';
            buf[o++] = hex[c >> 4];
            buf[o++] = hex[c & 15];
        }
    }
    buf[o] = '\0';
}

/* Link: <route?filters&limit=&cursor=next>; rel="next" for a page that has a next one:
 * the same query with the next cursor (RFC 8288; relative to the request's URL). */
static void next_link(const tms_op_t *op, const tms_api_call_t *call, char *out, size_t size)
{
    char enc[3 * 256 + 1];
    size_t o = (size_t)snprintf(out, size, "<%s?", op->rest_route);
    if (call->assigned_to && call->assigned_to[0] && o < size) {
        query_encode(enc, sizeof(enc), call->assigned_to);
        o += (size_t)snprintf(out + o, size - o, "assignedTo=%s&", enc);
    }
    if (call->status && call->status[0] && o < size) {
        query_encode(enc, sizeof(enc), call->status);
        o += (size_t)snprintf(out + o, size - o, "status=%s&", enc);
    }
    query_encode(enc, sizeof(enc), call->next_cursor);
    if (o < size)
        snprintf(out + o, size - o, "limit=%d&cursor=%s>; rel=\"next\"",
                 (int)tms_op_list_size(op, call->limit), enc);
}

static void render(tms_http_request_t *req, tms_api_call_t *call)
{
    const tms_op_t *op = tms_op_get(call->op);
    tms_http_header_t h[8];
    char lim[24], rem[24], reset[24], retry[24], etag[32], location[96], link[1200];
    const char *inm;
    size_t nh = 0;
    json_t *body = NULL;
    int status;

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
    /* A created user is at /api/auth/users/:id (GET: the user or an admin). */
    if (op && op->rest_status == 201 &&
        (op->result == TMS_RESULT_SESSION || op->result == TMS_RESULT_USER)) {
        snprintf(location, sizeof(location), "/api/auth/users/%s", call->user.id);
        h[nh++] = (tms_http_header_t){"Location", location};
    }
    switch (op ? op->result : 0) {
    case TMS_RESULT_SESSION:
        body = json_pack("{s:s, s:o}", "token", call->token, "user", user_json(&call->user));
        break;
    case TMS_RESULT_USER:
        body = user_json(&call->user);
        break;
    case TMS_RESULT_DONE:
        body = json_pack("{s:b}", "success", 1);
        break;
    case TMS_RESULT_TASK: {
        /* A replayed create answers exactly as the first request did. */
        char *e = etag;
        *e++ = '"';
        e = tms_jsonw_int(e, call->task.version);
        *e++ = '"';
        *e = '\0';
        h[nh++] = (tms_http_header_t){"ETag", etag};
        if (op->rest_status == 201) {
            snprintf(location, sizeof(location), "%s/%lld", op->rest_route,
                     (long long)call->task.id);
            h[nh++] = (tms_http_header_t){"Location", location};
        }
        /* The version is the ETag: a client holding it is told that nothing changed. */
        if (op->rest_status == 200 &&
            (strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0) &&
            (inm = tms_http_header_get(req, "If-None-Match")) && etag_matches(inm, etag)) {
            tms_http_respond(req, 304, h, nh, NULL, "", 0);
            return;
        }
        respond_tasks(req, call, op->rest_status, h, nh, false);
        return;
    }
    case TMS_RESULT_TASKS:
        if (call->next_cursor) {
            next_link(op, call, link, sizeof(link));
            h[nh++] = (tms_http_header_t){"Link", link};
        }
        respond_tasks(req, call, op->rest_status, h, nh, true);
        return;
    case TMS_RESULT_DELETED:
        body = json_pack("{s:s}", "message", "Task deleted");
        break;
    case TMS_RESULT_TICKET: {
        char exp[32];
        h[nh++] = (tms_http_header_t){"Cache-Control", "no-store"};
        body = json_pack("{s:s, s:s}", "ticket", call->token ? call->token : "", "expiresAt",
                         tms_format_time(call->ticket_expires_ms, exp, sizeof(exp)));
        break;
    }
    default:
        tms_http_respond_error(req, TMS_INTERNAL, "internal error", h, nh);
        return;
    }
    status = op->rest_status;
    if (!body)
        tms_oom(__FILE__, __LINE__);
    respond_json(req, status, body, h, nh);
}

/* ---- Server-Sent Events: GET /api/task/events (core/push.h) ----------- */

/* One stream: the hub's sink over the HTTP stream. Freed by whichever ends first: the
 * hub (end) or the connection (closed). */
typedef struct sse {
    tms_push_sink_t sink; /* first: the hub hands &sink back */
    tms_http_stream_t *st;
    tms_push_sub_t *sub;
    /* before the stream began (tms_push_subscribe may send at once): bytes held, and
     * the end the hub gave, if it did */
    char *pre;
    size_t pre_len;
    bool ended; /* the hub ended it already: start_stream sends what is held, then ends */
} sse_t;

/* Bytes to the client, or held until the stream begins. */
static void sse_write(sse_t *x, const char *b, size_t len)
{
    if (x->st) {
        (void)tms_http_stream_write(x->st, b, len); /* a closed connection says so itself */
        return;
    }
    x->pre = tms_realloc(x->pre, x->pre_len + len);
    memcpy(x->pre + x->pre_len, b, len);
    x->pre_len += len;
}

static const char *const sse_types[] = {"unknown",  "created", "updated",
                                        "assigned", "deleted", "reset"};

/* The event's bytes, made once for every stream of the hub. */
static const char *sse_bytes(tms_push_event_t *e, size_t *len)
{
    if (!e->enc[TMS_PUSH_ENC_SSE]) {
        const tms_task_event_t *ev = &e->ev;
        const char *type = (size_t)ev->type < sizeof(sse_types) / sizeof(sse_types[0])
                               ? sse_types[ev->type]
                               : "unknown";
        char id[24], at[32];
        json_t *data;
        char *text, *out;
        int n;
        snprintf(id, sizeof(id), "%lld", (long long)ev->seq);
        data = json_pack("{s:s, s:s, s:s}", "id", id, "type", type, "time",
                         tms_format_time(ev->at_ms, at, sizeof(at)));
        if (!data)
            tms_oom(__FILE__, __LINE__);
        if (ev->type != TMS_TASK_EVENT_RESET)
            json_object_set_new(data, "task", task_json(&ev->task));
        text = json_dumps(data, JSON_COMPACT); /* one line: no raw newlines in JSON */
        json_decref(data);
        if (!text)
            tms_oom(__FILE__, __LINE__);
        n = snprintf(NULL, 0, "id: %s\nevent: %s\ndata: %s\n\n", id, type, text);
        out = tms_malloc((size_t)n + 1);
        snprintf(out, (size_t)n + 1, "id: %s\nevent: %s\ndata: %s\n\n", id, type, text);
        free(text);
        e->enc[TMS_PUSH_ENC_SSE] = out;
        e->enc_len[TMS_PUSH_ENC_SSE] = (size_t)n;
    }
    *len = e->enc_len[TMS_PUSH_ENC_SSE];
    return e->enc[TMS_PUSH_ENC_SSE];
}

static int sse_send(tms_push_sink_t *self, tms_push_event_t *e)
{
    sse_t *x = (sse_t *)self;
    size_t len;
    const char *b = sse_bytes(e, &len);
    if (self->queued(self) + len > self->queue_bytes)
        return -1;
    sse_write(x, b, len);
    return 0;
}

static size_t sse_queued(tms_push_sink_t *self)
{
    sse_t *x = (sse_t *)self;
    return x->st ? tms_http_stream_queued(x->st) : x->pre_len;
}

static void sse_heartbeat(tms_push_sink_t *self)
{
    sse_write((sse_t *)self, ": heartbeat\n\n", 13);
}

/* The hub ends the stream: a last event says why (slow consumer, revoked, shutdown). */
static void sse_end(tms_push_sink_t *self, tms_status_t code, const char *message)
{
    sse_t *x = (sse_t *)self;
    json_t *data =
        json_pack("{s:s, s:s}", "code", tms_status_name(code), "message", message ? message : "");
    char *text = data ? json_dumps(data, JSON_COMPACT) : NULL;
    if (text) {
        size_t n = strlen(text) + 32;
        char *out = tms_malloc(n);
        int len = snprintf(out, n, "event: error\ndata: %s\n\n", text);
        sse_write(x, out, (size_t)len);
        free(out);
        free(text);
    }
    json_decref(data);
    x->sub = NULL;
    if (!x->st) {
        x->ended = true;
        return;
    }
    tms_http_stream_end(x->st);
    free(x->pre);
    free(x);
}

/* The client went away (or the send timeout): the hub forgets it. */
static void sse_closed(void *arg)
{
    sse_t *x = arg;
    tms_push_unsubscribe(&x->sub);
    free(x->pre);
    free(x);
}

/* A watch call the auth actor answered OK: subscribe its caller, then stream. */
static void start_stream(tms_rest_t *rest, tms_http_request_t *req, tms_api_call_t *call)
{
    sse_t *x;
    tms_error_t err = {0};
    char retry[48];
    tms_http_header_t h[3] = {{"Cache-Control", "no-store"}, {"X-Accel-Buffering", "no"}};
    int n;
    if (!rest->cfg.push) {
        tms_http_respond_error(req, TMS_UNAVAILABLE, "task events are not served here", NULL, 0);
        return;
    }
    x = tms_new(sse_t);
    x->sink.send = sse_send;
    x->sink.queued = sse_queued;
    x->sink.heartbeat = sse_heartbeat;
    x->sink.end = sse_end;
    x->sub = tms_push_subscribe(rest->cfg.push, call, &x->sink, &err);
    if (!x->sub) {
        tms_http_header_t ra = {"Retry-After", "5"};
        free(x);
        tms_http_respond_error(req, err.code, err.message, &ra,
                               err.code == TMS_RESOURCE_EXHAUSTED ? 1 : 0);
        return;
    }
    x->st = tms_http_stream_begin(req, 200, h, 2, "text/event-stream; charset=utf-8",
                                  x->ended ? NULL : sse_closed, x);
    if (!x->st) {
        tms_push_unsubscribe(&x->sub);
        free(x->pre);
        free(x);
        return;
    }
    n = snprintf(retry, sizeof(retry), "retry: %llu\n\n",
                 (unsigned long long)(rest->cfg.sse_retry_ms ? rest->cfg.sse_retry_ms : 3000));
    (void)tms_http_stream_write(x->st, retry, (size_t)n);
    if (x->pre_len)
        (void)tms_http_stream_write(x->st, x->pre, x->pre_len);
    free(x->pre);
    x->pre = NULL;
    x->pre_len = 0;
    if (x->ended) {
        tms_http_stream_end(x->st);
        free(x);
    }
}

/* ---- calls to the gateway -------------------------------------------- */

static void on_reply(tms_msg_t *msg)
{
    tms_api_call_t *call = (tms_api_call_t *)msg;
    pending_t *p = msg->ctx;
    tms_rest_t *rest = p->rest;
    const tms_op_t *op = tms_op_get(call->op);
    if (p->req) {
        tms_deadlines_remove(rest->deadlines, &p->deadline);
        if (call->err.code == TMS_OK && op && op->result == TMS_RESULT_STREAM)
            start_stream(rest, p->req, call);
        else
            render(p->req, call);
    }
    tms_api_call_free(&call); /* p goes with it */
    less_pending(rest);
}

/* A call past its deadline (off the list already): answered 504; the call is still
 * with the actors, and its reply is dropped when it comes. */
static void on_deadline(tms_deadline_t *d, void *ctx)
{
    pending_t *p = (pending_t *)d;
    tms_http_request_t *req = p->req;
    (void)ctx;
    p->req = NULL;
    tms_log_warn("deadline_exceeded", "rid=%s op=%s", req->request_id,
                 tms_api_op_name(p->call->op));
    tms_http_respond_error(req, TMS_DEADLINE_EXCEEDED, "request took too long", NULL, 0);
}

static void send_call(tms_rest_t *rest, tms_http_request_t *req, tms_api_call_t *call)
{
    pending_t *p;
    tms_msg_t *msg = &call->msg;
    if (!rest->cfg.gateway) {
        tms_api_call_free(&call);
        tms_http_respond_error(req, TMS_NOT_FOUND, "this process does not serve the API", NULL, 0);
        return;
    }
    p = tms_arena_calloc(&call->arena, 1, sizeof(*p));
    p->rest = rest;
    p->req = req;
    p->call = call;
    tms_text_copy(call->request_id, sizeof(call->request_id), req->request_id);
    tms_text_copy(call->client_addr, sizeof(call->client_addr), req->client_addr);
    call->deadline_ms = uv_now(rest->loop) + rest->cfg.call_timeout_ms;
    msg->kind = TMS_MSG_REQUEST;
    msg->reply_to = rest->replies;
    msg->cont = on_reply;
    msg->ctx = p;
    if (tms_mailbox_post(rest->cfg.gateway, &msg) != 0) {
        tms_api_call_free(&call); /* p with it */
        tms_http_respond_error(req, TMS_UNAVAILABLE, "server overloaded, retry later", NULL, 0);
        return;
    }
    rest->pending++;
    tms_deadlines_add(rest->deadlines, &p->deadline, call->deadline_ms);
}

/* ---- request parsing -------------------------------------------------- */

static char *bearer_token(const tms_http_request_t *req, tms_api_call_t *call)
{
    const char *h = tms_http_header_get(req, "Authorization");
    if (!h)
        return NULL;
    if (strncasecmp(h, "Bearer ", 7) != 0)
        return tms_api_call_strdup(call, ""); /* present but not a bearer token: invalid */
    h += 7;
    while (*h == ' ')
        h++;
    return tms_api_call_strdup(call, h);
}

/* The body as a JSON object, or NULL after answering 400 (a parse error names the line
 * and column where parsing stopped, the last character of the offending token:
 * "malformed JSON body at line 1, column 12: ':' expected near '"t"'"). */
static json_t *load_body(tms_http_request_t *req)
{
    json_error_t jerr;
    char msg[200];
    json_t *root = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        if (req->body_len == 0)
            snprintf(msg, sizeof(msg), "a JSON body is required");
        else
            snprintf(msg, sizeof(msg), "malformed JSON body at line %d, column %d: %.100s",
                     jerr.line, jerr.column, jerr.text);
        tms_http_respond_error(req, TMS_INVALID_ARGUMENT, msg, NULL, 0);
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        tms_http_respond_error(req, TMS_INVALID_ARGUMENT, "request body must be a JSON object",
                               NULL, 0);
        return NULL;
    }
    return root;
}

/* Parses {email, password}; with only_known, any other field is refused as task bodies
 * refuse theirs. Answers 400 itself and returns -1 on bad input. */
static int parse_credentials(tms_http_request_t *req, tms_api_call_t *call, bool only_known)
{
    json_t *root, *email, *password, *v;
    const char *problem = NULL, *key;
    char msg[160];
    if (!(root = load_body(req)))
        return -1;
    if (only_known) {
        json_object_foreach(root, key, v)
        {
            if (strcmp(key, "email") != 0 && strcmp(key, "password") != 0) {
                snprintf(msg, sizeof(msg), "unknown field: %.64s (known: email, password)", key);
                problem = msg;
                goto bad;
            }
        }
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
    call->email = tms_api_call_strdup(call, json_string_value(email));
    call->password = tms_api_call_strdup(call, json_string_value(password));
    json_decref(root);
    return 0;
bad:
    if (root)
        json_decref(root);
    tms_http_respond_error(req, TMS_INVALID_ARGUMENT, problem, NULL, 0);
    return -1;
}

/* Parses a task body: a JSON object whose only keys are title, description, status
 * (strings) and assignedTo (string, or null = nobody). Unknown keys are refused, as
 * API.md asks. Answers 400 itself and returns -1 on bad input. */
static int parse_task_body(tms_http_request_t *req, tms_api_call_t *call, int update)
{
    json_t *root, *v;
    const char *key, *problem = NULL;
    char msg[160];
    if (!(root = load_body(req)))
        return -1;
    json_object_foreach(root, key, v)
    {
        char **slot = strcmp(key, "title") == 0         ? &call->title
                      : strcmp(key, "description") == 0 ? &call->description
                      : strcmp(key, "status") == 0      ? &call->status
                      : strcmp(key, "assignedTo") == 0  ? &call->assigned_to
                                                        : NULL;
        if (!slot) {
            snprintf(msg, sizeof(msg),
                     "unknown field: %.64s (known: title, description, status, assignedTo)", key);
            problem = msg;
            goto bad;
        }
        if (json_is_null(v) && slot == &call->assigned_to) {
            *slot = tms_api_call_strdup(call, "");
            continue;
        }
        if (!json_is_string(v) || strlen(json_string_value(v)) != json_string_length(v)) {
            snprintf(msg, sizeof(msg), "%.32s must be a string%s", key,
                     slot == &call->assigned_to ? " or null" : "");
            problem = msg;
            goto bad;
        }
        *slot = tms_api_call_strdup(call, json_string_value(v));
    }
    if (update && json_object_size(root) == 0) {
        problem = "no fields to update";
        goto bad;
    }
    json_decref(root);
    return 0;
bad:
    if (root)
        json_decref(root);
    tms_http_respond_error(req, TMS_INVALID_ARGUMENT, problem, NULL, 0);
    return -1;
}

static int hexval(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* Percent-decodes (and '+' as space) s[0..len) into out (len + 1 bytes; NULL: only
 * check); -1 when the encoding is broken or decodes to a NUL. */
static int url_decode(char *out, const char *s, size_t len)
{
    char *o = out;
    for (size_t i = 0; i < len; i++) {
        char c = s[i] == '+' ? ' ' : s[i];
        if (s[i] == '%') {
            if (i + 2 >= len || hexval(s[i + 1]) < 0 || hexval(s[i + 2]) < 0 ||
                (hexval(s[i + 1]) == 0 && hexval(s[i + 2]) == 0))
                return -1;
            c = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
            i += 2;
        }
        if (o)
            *o++ = c;
    }
    if (o)
        *o = '\0';
    return 0;
}

/* Parses ?assignedTo=&status=&limit=&cursor= into call; any other parameter is
 * refused, naming it (Express ignored them: a client with a typo believed it had
 * filtered). limit is checked against op's list size. Answers 400 itself and returns
 * -1 on bad input. */
static int parse_list_query(tms_http_request_t *req, const tms_op_t *op, tms_api_call_t *call)
{
    const char *q = req->query, *problem = NULL;
    char msg[200], name[48];
    tms_error_t err;
    while (*q) {
        const char *amp = strchr(q, '&'), *eq;
        size_t n = amp ? (size_t)(amp - q) : strlen(q);
        eq = memchr(q, '=', n);
        if (!eq)
            eq = q + n; /* "?status": a key without a value, as "?status=" */
        if (n) {
            size_t klen = (size_t)(eq - q), vlen = klen < n ? n - klen - 1 : 0;
            char *value = NULL, **slot = NULL, num[24];
#define KEY(k) (klen == sizeof(k) - 1 && memcmp(q, k, klen) == 0)
            /* Only the values kept take room in the call; the others are checked. */
            if (KEY("assignedTo") || KEY("status") || KEY("cursor")) {
                value = tms_arena_alloc(&call->arena, vlen + 1);
            } else if (KEY("limit")) {
                value = vlen < sizeof(num) ? num : tms_arena_alloc(&call->arena, vlen + 1);
            } else {
                if (klen >= sizeof(name) || url_decode(name, q, klen) != 0)
                    snprintf(name, sizeof(name), "%.*s...", (int)(klen < 32 ? klen : 32), q);
                snprintf(msg, sizeof(msg),
                         "unknown query parameter: %s (known: assignedTo, status, limit, cursor)",
                         name);
                problem = msg;
                goto bad;
            }
            if (url_decode(value, klen < n ? eq + 1 : eq, vlen) != 0) {
                problem = "malformed query string";
                goto bad;
            }
            if (KEY("assignedTo"))
                slot = &call->assigned_to;
            else if (KEY("status"))
                slot = &call->status;
            else if (KEY("cursor"))
                slot = &call->cursor;
            else if (KEY("limit")) {
                int64_t v = tms_parse_id(value, strlen(value));
                if (tms_op_check_list_size(op, v, &err) != 0) {
                    problem = err.message;
                    goto bad;
                }
                call->limit = (int32_t)v;
            }
#undef KEY
            if (slot) {
                if (*slot) { /* a repeated parameter is ambiguous */
                    problem = "query parameter given twice";
                    goto bad;
                }
                if (value[0] != '\0' || slot == &call->cursor)
                    *slot = value; /* an empty filter means no filter */
            }
        }
        q += n + (amp ? 1 : 0);
    }
    return 0;
bad:
    tms_http_respond_error(req, TMS_INVALID_ARGUMENT, problem, NULL, 0);
    return -1;
}

/* A decimal event or task id: 0 or more; -1 when malformed. */
static int64_t decimal(const char *v)
{
    int64_t n = 0;
    if (!v[0] || strlen(v) > 18)
        return -1;
    for (const char *p = v; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        n = n * 10 + (*p - '0');
    }
    return n;
}

/* GET /api/task/events: ?assignedTo=&status=&id=&since=&ticket= and Last-Event-ID
 * (which wins over since: it is where a reconnecting EventSource was). Answers 400
 * itself and returns -1 on bad input. */
static int parse_watch_query(tms_http_request_t *req, tms_api_call_t *call)
{
    const char *q = req->query, *problem = NULL, *last;
    const char *since = NULL;
    while (*q) {
        const char *amp = strchr(q, '&'), *eq;
        size_t n = amp ? (size_t)(amp - q) : strlen(q);
        eq = memchr(q, '=', n);
        if (eq) {
            size_t klen = (size_t)(eq - q), vlen = n - klen - 1;
            char *value, **slot = NULL;
#define KEY(k) (klen == sizeof(k) - 1 && memcmp(q, k, klen) == 0)
            if (KEY("assignedTo") || KEY("status") || KEY("id") || KEY("since") || KEY("ticket")) {
                if (vlen > 256) {
                    problem = "query parameter too long";
                    goto bad;
                }
                value = tms_arena_alloc(&call->arena, vlen + 1);
                if (url_decode(value, eq + 1, vlen) != 0) {
                    problem = "malformed query string";
                    goto bad;
                }
                if (KEY("assignedTo"))
                    slot = &call->assigned_to;
                else if (KEY("status"))
                    slot = &call->status;
                else if (KEY("ticket"))
                    slot = &call->ticket;
                else if (KEY("since")) {
                    if (since) {
                        problem = "query parameter given twice";
                        goto bad;
                    }
                    since = value;
                } else if (value[0]) {
                    int64_t id = decimal(value);
                    if (id <= 0 || call->task_id) {
                        problem = "id must be a task id, given once";
                        goto bad;
                    }
                    call->task_id = id;
                }
            }
#undef KEY
            if (slot) {
                if (*slot) {
                    problem = "query parameter given twice";
                    goto bad;
                }
                if (value[0])
                    *slot = value;
            }
        }
        q += n + (amp ? 1 : 0);
    }
    last = tms_http_header_get(req, "Last-Event-ID");
    if (last && last[0])
        since = last;
    if (since && since[0]) {
        call->since = decimal(since);
        if (call->since < 0) {
            problem = "since and Last-Event-ID must be an event id";
            goto bad;
        }
        call->has_since = true;
    }
    if (call->bearer && call->ticket)
        call->ticket = NULL; /* the header wins; the ticket stays unused */
    return 0;
bad:
    tms_http_respond_error(req, TMS_INVALID_ARGUMENT, problem, NULL, 0);
    return -1;
}

/* If-Match: "3", W/"3" or 3 name a version; "*" means any. */
static int parse_if_match(tms_http_request_t *req, tms_api_call_t *call)
{
    const char *h = tms_http_header_get(req, "If-Match");
    size_t n;
    if (!h || strcmp(h, "*") == 0)
        return 0;
    if (strncmp(h, "W/", 2) == 0)
        h += 2;
    n = strlen(h);
    if (n >= 2 && h[0] == '"' && h[n - 1] == '"') {
        h++;
        n -= 2;
    }
    call->if_match = tms_parse_id(h, n);
    if (call->if_match <= 0) {
        tms_http_respond_error(req, TMS_INVALID_ARGUMENT,
                               "If-Match must be a version ETag such as \"3\"", NULL, 0);
        return -1;
    }
    call->has_if_match = true;
    return 0;
}

/* Matches path against a route; a trailing ":id" captures one segment into id.
 * Returns 2 for a route without ":id", 1 for one with it, 0 when path is not the
 * route's, -1 when it is but the segment does not fit id. */
static int match_path(const char *pattern, const char *path, size_t path_len, char *id,
                      size_t id_size)
{
    size_t prefix = 0;
    /* One pass over the pattern (this runs for every route of every request). */
    while (pattern[prefix] && pattern[prefix] != ':') {
        if (prefix >= path_len || pattern[prefix] != path[prefix])
            return 0;
        prefix++;
    }
    if (!pattern[prefix])
        return prefix == path_len ? 2 : 0;
    if (pattern[prefix + 1] != 'i' || pattern[prefix + 2] != 'd' || pattern[prefix + 3] ||
        path_len <= prefix)
        return 0; /* the only parameter a route has is a trailing ":id" */
    const char *seg = path + prefix;
    size_t seg_len = path_len - prefix;
    if (memchr(seg, '/', seg_len) || seg_len >= id_size)
        return seg_len < id_size ? 0 : -1;
    memcpy(id, seg, seg_len);
    id[seg_len] = '\0';
    return 1;
}

/* ---- operations endpoints --------------------------------------------- */

/* /readyz asks every store to answer a ping; the reply waits for all of them or
 * for READY_TIMEOUT_MS, whichever comes first. */
typedef struct probe {
    uv_timer_t timer;
    tms_rest_t *rest;
    tms_http_request_t *req;   /* NULL once answered */
    int outstanding;           /* pings not yet answered, + 1 for the timer */
    const char *users, *tasks; /* NULL: no such store in this process */
} probe_t;

typedef struct ping {
    union {
        tms_user_op_t user;
        tms_task_op_t task;
    } op; /* first member: the message */
    probe_t *probe;
    const char **result;
} ping_t;

static int check_ok(const char *result)
{
    return !result || strcmp(result, "ok") == 0;
}

static int check_done(const char *result)
{
    return !result || strcmp(result, "pending") != 0;
}

static void respond_ready(probe_t *p)
{
    const tms_rest_config_t *cfg = &p->rest->cfg;
    int ok = check_ok(p->users) && check_ok(p->tasks);
    json_t *checks = json_object();
    json_t *body;
    if (p->users)
        json_object_set_new(checks, "users", json_string(p->users));
    if (p->tasks)
        json_object_set_new(checks, "tasks", json_string(p->tasks));
    /* The event bus (Kafka) and the peers answer from their own state: no round
     * trip needed. */
    if (cfg->events_ready) {
        int ev = cfg->events_ready(cfg->events_arg);
        ok = ok && ev;
        json_object_set_new(checks, "events", json_string(ev ? "ok" : "unavailable"));
    }
    for (size_t i = 0; i < cfg->npeers; i++) {
        char name[48];
        int up = cfg->peers[i].ready(cfg->peers[i].arg);
        ok = ok && up;
        snprintf(name, sizeof(name), "peer_%s", cfg->peers[i].name);
        json_object_set_new(checks, name, json_string(up ? "ok" : "unavailable"));
    }
    body = json_pack("{s:s, s:o}", "status", ok ? "ready" : "unavailable", "checks", checks);
    respond_json(p->req, ok ? 200 : 503, body, NULL, 0);
    p->req = NULL;
}

static void on_probe_closed(uv_handle_t *h)
{
    probe_t *p = h->data;
    tms_rest_t *rest = p->rest;
    free(p);
    less_pending(rest);
}

static void probe_release(probe_t *p)
{
    if (--p->outstanding == 0)
        uv_close((uv_handle_t *)&p->timer, on_probe_closed);
}

static void on_ping_reply(tms_msg_t *msg)
{
    ping_t *ping = (ping_t *)msg;
    probe_t *p = ping->probe;
    /* Both op structs start with the message and keep err at their own offset. */
    tms_status_t code = ping->result == &p->users ? ping->op.user.err.code : ping->op.task.err.code;
    *ping->result = code == TMS_OK ? "ok" : "unavailable";
    free(ping);
    if (p->req && check_done(p->users) && check_done(p->tasks)) {
        uv_timer_stop(&p->timer);
        respond_ready(p);
        probe_release(p); /* the timer's share */
    }
    probe_release(p);
}

static void on_probe_timeout(uv_timer_t *t)
{
    probe_t *p = t->data;
    if (!check_done(p->users))
        p->users = "timeout";
    if (!check_done(p->tasks))
        p->tasks = "timeout";
    respond_ready(p);
    probe_release(p);
}

static void free_ping(tms_msg_t *msg)
{
    free(msg);
}

static void send_ping(probe_t *p, int users)
{
    ping_t *ping = tms_new(ping_t);
    tms_msg_t *msg = &ping->op.user.msg;
    int rc;
    ping->probe = p;
    ping->result = users ? &p->users : &p->tasks;
    msg->op = users ? TMS_USER_PING : TMS_TASK_PING;
    msg->reply_to = p->rest->replies;
    msg->cont = on_ping_reply;
    msg->free_fn = free_ping;
    if (users) {
        tms_user_op_t *op = &ping->op.user;
        rc = tms_user_store_submit(p->rest->cfg.users, &op);
    } else {
        tms_task_op_t *op = &ping->op.task;
        rc = tms_task_store_submit(p->rest->cfg.tasks, &op);
    }
    if (rc != 0) {
        *ping->result = "overloaded";
        free(ping);
        return;
    }
    p->outstanding++;
}

static void readyz(tms_rest_t *rest, tms_http_request_t *req)
{
    probe_t *p = tms_new(probe_t);
    p->rest = rest;
    p->req = req;
    p->users = rest->cfg.users ? "pending" : NULL;
    p->tasks = rest->cfg.tasks ? "pending" : NULL;
    p->outstanding = 1; /* the timer */
    uv_timer_init(rest->loop, &p->timer);
    p->timer.data = p;
    rest->pending++;
    if (rest->cfg.users)
        send_ping(p, 1);
    if (rest->cfg.tasks)
        send_ping(p, 0);
    if (p->outstanding == 1) { /* both refused at once, or nothing to ask */
        respond_ready(p);
        probe_release(p);
        return;
    }
    uv_timer_start(&p->timer, on_probe_timeout, READY_TIMEOUT_MS, 0);
}

static void respond_metrics(tms_http_request_t *req)
{
    size_t n;
    char *text = tms_metrics_render(&n);
    tms_http_respond(req, 200, NULL, 0, "text/plain; version=0.0.4; charset=utf-8", text, n);
    free(text);
}

/* Compared as hashes, so the time taken says nothing about the token. */
static bool metrics_token_ok(tms_rest_t *rest, tms_http_request_t *req)
{
    unsigned char h[crypto_generichash_BYTES];
    const char *a = tms_http_header_get(req, "Authorization");
    if (!a || strncasecmp(a, "Bearer ", 7) != 0)
        return false;
    a += 7;
    while (*a == ' ')
        a++;
    crypto_generichash(h, sizeof(h), (const unsigned char *)a, strlen(a), NULL, 0);
    return sodium_memcmp(h, rest->metrics_token_hash, sizeof(h)) == 0;
}

void tms_rest_handle_metrics(void *ctx, tms_http_request_t *req)
{
    size_t len = strlen(req->path);
    (void)ctx;
    if (len == 8 && memcmp(req->path, "/metrics", 8) == 0) {
        req->route = "/metrics";
        if (strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0) {
            respond_metrics(req);
        } else {
            tms_http_header_t allow = {"Allow", "GET, HEAD"};
            tms_http_respond_error_status(req, 405, TMS_UNIMPLEMENTED,
                                          "method not allowed on this path", &allow, 1);
        }
        return;
    }
    tms_http_respond_error(req, TMS_NOT_FOUND, "only /metrics is served here", NULL, 0);
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
    if (IS("/metrics") && rest->metrics_public) {
        req->route = "/metrics";
        if (!get)
            goto wrong_method;
        if (!metrics_token_ok(rest, req)) {
            tms_http_header_t www = {"WWW-Authenticate", "Bearer realm=\"metrics\""};
            tms_http_respond_error(req, TMS_UNAUTHENTICATED, "metrics token required", &www, 1);
            return 1;
        }
        respond_metrics(req);
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
    tms_http_respond_error_status(req, 405, TMS_UNIMPLEMENTED, "method not allowed on this path",
                                  &allow, 1);
    return 1;
}
}

/* Fills call from the request, taking the arguments op's row names (core/ops.h);
 * answers 400 itself and returns -1 on bad input. */
static int decode_call(tms_http_request_t *req, const tms_op_t *op, const char *id,
                       tms_api_call_t *call)
{
    const char *idem;
    if (op->needs_caller)
        call->bearer = bearer_token(req, call);
    if (op->args & TMS_ARGS_USER_ID)
        snprintf(call->target_id, sizeof(call->target_id), "%s", id);
    if (op->args & TMS_ARGS_TASK_ID)
        call->task_id = tms_parse_id(id, strlen(id)); /* 0: malformed, the actor says so */
    if ((op->args & TMS_ARGS_IF_MATCH) && parse_if_match(req, call) != 0)
        return -1;
    if ((op->args & TMS_ARGS_IDEMPOTENCY) && (idem = tms_http_header_get(req, "Idempotency-Key")))
        call->idempotency_key = tms_api_call_strdup(call, idem);
    if (op->args & TMS_ARGS_CREDENTIALS)
        return parse_credentials(req, call, (op->args & TMS_ARGS_ONLY_KNOWN) != 0);
    if (op->args & (TMS_ARGS_TASK | TMS_ARGS_TASK_PATCH))
        return parse_task_body(req, call, (op->args & TMS_ARGS_TASK_PATCH) != 0);
    if (op->args & TMS_ARGS_LIST)
        return parse_list_query(req, op, call);
    if (op->args & TMS_ARGS_WATCH)
        return parse_watch_query(req, call);
    return 0;
}

/* The operations endpoints, each GET (and HEAD); served by serve_operations. */
static const char *const operations_paths[] = {"/healthz", "/readyz", "/metrics", "/openapi.json"};

void tms_rest_routes(void (*fn)(void *arg, const char *method, const char *route), void *arg)
{
    size_t n;
    const tms_op_t *ops = tms_ops(&n);
    for (size_t i = 0; i < sizeof(operations_paths) / sizeof(operations_paths[0]); i++)
        fn(arg, "GET", operations_paths[i]);
    for (size_t i = 0; i < n; i++) {
        if (ops[i].rest_method)
            fn(arg, ops[i].rest_method, ops[i].rest_route);
    }
}

/* Routes a request by the operation table: the row whose route and method match
 * (a route without ":id" wins over one with it); a path some row has with other
 * methods only is 405 with Allow; any other path 404. */
void tms_rest_handle(void *ctx, tms_http_request_t *req)
{
    tms_rest_t *rest = ctx;
    size_t len = strlen(req->path), nops;
    const char *path = req->path;
    const tms_op_t *ops = tms_ops(&nops), *op = NULL;
    int best = 0, op_match = 0;
    char id[32], scratch[32], allow[64] = "";
    const char *route = NULL;

    if (len > 1 && path[len - 1] == '/')
        len--; /* Express matches with or without one trailing slash */
    if (serve_operations(rest, req, path, len))
        return;
    /* One pass: the best-ranked routes win, and among them the first whose method is
     * the request's (a higher rank found later replaces what was chosen). */
    for (size_t i = 0; i < nops; i++) {
        int m, rank;
        if (!ops[i].rest_method)
            continue;
        m = match_path(ops[i].rest_route, path, len, scratch, sizeof(scratch));
        rank = m < 0 ? 1 : m; /* a segment too long for an id still names the route */
        if (!rank || rank < best)
            continue;
        if (rank > best) {
            best = rank;
            route = ops[i].rest_route;
            op = NULL;
        }
        if (!op && strcmp(ops[i].rest_method, req->method) == 0) {
            op = &ops[i];
            op_match = m;
            if (m == 1)
                memcpy(id, scratch, sizeof(id));
        }
    }
    if (op) {
        req->route = op->rest_route;
        if (op_match < 0) {
            tms_http_respond_error(req, TMS_INVALID_ARGUMENT, "invalid id", NULL, 0);
            return;
        }
        tms_api_call_t *call = tms_api_call_new(op->op);
        if (decode_call(req, op, op_match == 1 ? id : "", call) != 0) {
            tms_api_call_free(&call);
            return;
        }
        send_call(rest, req, call);
        return;
    }
    if (route) {
        /* 405: the methods of the routes that matched best (only now: this is rare). */
        tms_http_header_t h = {"Allow", allow};
        for (size_t i = 0; i < nops; i++) {
            int m;
            if (!ops[i].rest_method)
                continue;
            m = match_path(ops[i].rest_route, path, len, scratch, sizeof(scratch));
            if ((m < 0 ? 1 : m) == best)
                snprintf(allow + strlen(allow), sizeof(allow) - strlen(allow), "%s%s",
                         allow[0] ? ", " : "", ops[i].rest_method);
        }
        req->route = route;
        tms_http_respond_error_status(req, 405, TMS_UNIMPLEMENTED,
                                      "no route for this method and path", &h, 1);
        return;
    }
    /* `curl /` or `/api/tasks` is often a newcomer's first call: say where the routes are. */
    tms_http_respond_error(req, TMS_NOT_FOUND,
                           "no route for this path; GET /openapi.json lists the routes", NULL, 0);
}

tms_rest_t *tms_rest_new(uv_loop_t *loop, const tms_rest_config_t *cfg)
{
    tms_rest_t *rest = tms_new(tms_rest_t);
    rest->loop = loop;
    rest->cfg = *cfg;
    rest->cfg.metrics_token = NULL; /* only its hash is kept */
    if (cfg->metrics_token && cfg->metrics_token[0]) {
        rest->metrics_public = true;
        crypto_generichash(rest->metrics_token_hash, sizeof(rest->metrics_token_hash),
                           (const unsigned char *)cfg->metrics_token, strlen(cfg->metrics_token),
                           NULL, 0);
    }
    /* Replies are not counted against a mailbox bound; 1 is only the request bound. */
    rest->replies = tms_mailbox_new(loop, "rest", 1, NULL, rest);
    rest->deadlines = tms_deadlines_new(loop, on_deadline, rest);
    return rest;
}

size_t tms_rest_pending(tms_rest_t *rest)
{
    return rest->pending;
}

void tms_rest_drain(tms_rest_t *rest, void (*drained)(void *arg), void *arg)
{
    if (rest->pending == 0) {
        drained(arg);
        return;
    }
    rest->drained = drained;
    rest->drained_arg = arg;
}

void tms_rest_free(tms_rest_t **prest)
{
    tms_rest_t *rest = *prest;
    if (!rest)
        return;
    *prest = NULL;
    tms_mailbox_free(&rest->replies);
    tms_deadlines_free(&rest->deadlines);
    free(rest);
}
