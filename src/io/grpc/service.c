/* The gRPC API mapping (service.h): routes from the operation table, method ->
 * tms_api_call_t, result -> protobuf, status; health, reflection and the internal
 * service.
 *
 * A call with the actors is a pending_t attached to its stream and outliving it: a
 * deadline, a RST_STREAM from the client or a closed connection only detach it, and
 * the reply, when it comes, is dropped and freed (as http/rest.c does). */
#include "io/grpc/service.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <sodium.h>

#include "core/alloc.h"
#include "core/api.h"
#include "core/cidr.h"
#include "core/deadlines.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/ops.h"
#include "core/status.h"
#include "io/grpc/codec.h"
#include "io/grpc/internal.h"

#define DEFAULT_CALL_TIMEOUT_MS 30000

/* What a route is, beside its shape. */
enum {
    KIND_API = 1,      /* an operation of the table: route.data is its row */
    KIND_HEALTH_CHECK, /* unary */
    KIND_HEALTH_WATCH, /* unary request, open until cancelled or stopped */
    KIND_REFLECTION,   /* bidi */
    KIND_INTERNAL,     /* tms.internal.Actors/Call */
};

/* The metadata the transport keeps for us, by index. */
enum { META_AUTHORIZATION, META_SERVICE_TOKEN };
static const char *const metadata[] = {"authorization", TMS_INTERNAL_TOKEN_HEADER};

static const tms_grpc_route_t own_routes[] = {
    {"/grpc.health.v1.Health/Check", TMS_GRPC_UNARY, KIND_HEALTH_CHECK, NULL},
    {"/grpc.health.v1.Health/Watch", TMS_GRPC_UNARY, KIND_HEALTH_WATCH, NULL},
    {"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", TMS_GRPC_BIDI,
     KIND_REFLECTION, NULL},
    {"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", TMS_GRPC_BIDI, KIND_REFLECTION,
     NULL},
    {TMS_INTERNAL_CALL_PATH, TMS_GRPC_UNARY, KIND_INTERNAL, NULL},
};
#define NOWN (sizeof(own_routes) / sizeof(own_routes[0]))

struct tms_grpc_service {
    uv_loop_t *loop;
    tms_grpc_service_config_t cfg;
    unsigned char token_hash[crypto_generichash_BYTES]; /* of cfg.service_token */
    tms_mailbox_t *replies;
    tms_cidr_list_t trusted;                        /* cfg.trusted_peers */
    tms_counter_t *trusted_calls[TMS_API_OP_COUNT]; /* by op, when trusted.n */
    tms_grpc_route_t *routes;                       /* the table's gRPC methods, then own_routes */
    size_t nroutes;
    size_t pending;
    void (*drained)(void *arg); /* tms_grpc_service_drain: once pending reaches 0 */
    void *drained_arg;
    tms_deadlines_t *deadlines; /* of the calls whose stream still waits: one timer */
};

/* A call with the actors, in the call's arena. The call is freed (and this with it)
 * when its reply comes; st is NULL once the stream was answered otherwise or is gone
 * (and it is then off the service's deadline list). */
typedef struct pending {
    bool watch;              /* false: what a stream has attached is this, not a watch_t */
    tms_deadline_t deadline; /* on svc->deadlines while st is set */
    tms_grpc_service_t *svc;
    tms_grpc_stream_t *st;
    tms_api_call_t *call;
    tms_api_op_t op;
    tms_api_cancel_t *cancel; /* set when the stream is reset before the reply */
} pending_t;

/* ---- calls to the actors ---- */

static void less_pending(tms_grpc_service_t *svc)
{
    void (*drained)(void *) = svc->drained;
    if (--svc->pending == 0 && drained) {
        svc->drained = NULL;
        drained(svc->drained_arg);
    }
}

static void render(tms_grpc_stream_t *st, tms_api_call_t *call)
{
    const tms_grpc_route_t *route = tms_grpc_stream_route(st);
    uint8_t *out;
    size_t len;
    tms_error_t err;
    if (route->kind == KIND_INTERNAL) {
        /* The domain outcome, errors included, is the payload: the calling process
         * answers its own client with it. */
        tms_internal_encode_result(call, &out, &len); /* in the call's arena */
        tms_grpc_stream_send(st, out, len);
        tms_grpc_stream_finish(st, TMS_OK, NULL);
        return;
    }
    if (tms_grpc_encode_reply(route->data, call, &out, &len, &err) != TMS_OK) {
        tms_grpc_stream_finish(st, err.code, err.message);
        return;
    }
    tms_grpc_stream_send(st, out, len); /* copies out, which is in the call's arena */
    tms_grpc_stream_finish(st, TMS_OK, NULL);
}

/* ---- tms.v1.TaskEvents/Watch: a push hub's sink (core/push.h) ---- */

typedef struct watch {
    bool watch; /* true: as pending_t's first member */
    tms_push_sink_t sink;
    tms_grpc_stream_t *st;
    tms_push_sub_t *sub;
} watch_t;

static int watch_send(tms_push_sink_t *self, tms_push_event_t *e)
{
    watch_t *w = (watch_t *)((char *)self - offsetof(watch_t, sink));
    if (!e->enc[TMS_PUSH_ENC_GRPC]) {
        uint8_t *out;
        size_t len;
        tms_grpc_encode_event(&e->ev, &out, &len);
        e->enc[TMS_PUSH_ENC_GRPC] = out;
        e->enc_len[TMS_PUSH_ENC_GRPC] = len;
    }
    if (tms_grpc_stream_queued(w->st) + e->enc_len[TMS_PUSH_ENC_GRPC] > self->queue_bytes)
        return -1;
    /* false: a transport bound ended the call; detach follows */
    (void)tms_grpc_stream_send(w->st, e->enc[TMS_PUSH_ENC_GRPC], e->enc_len[TMS_PUSH_ENC_GRPC]);
    tms_grpc_stream_flush(w->st);
    return 0;
}

static size_t watch_queued(tms_push_sink_t *self)
{
    watch_t *w = (watch_t *)((char *)self - offsetof(watch_t, sink));
    return tms_grpc_stream_queued(w->st);
}

static void watch_end(tms_push_sink_t *self, tms_status_t code, const char *message)
{
    watch_t *w = (watch_t *)((char *)self - offsetof(watch_t, sink));
    tms_grpc_stream_t *st = w->st;
    tms_grpc_stream_attach(st, NULL);
    w->sub = NULL;
    free(w);
    tms_grpc_stream_finish(st, code, message);
    tms_grpc_stream_flush(st);
}

/* The auth actor accepted the caller: subscribe it, keep the stream open. */
static void start_watch(tms_grpc_service_t *svc, tms_grpc_stream_t *st, tms_api_call_t *call)
{
    watch_t *w;
    tms_error_t err = {0};
    if (!svc->cfg.push) {
        tms_grpc_stream_finish(st, TMS_UNAVAILABLE, "task events are not served here");
        return;
    }
    w = tms_new(watch_t);
    w->watch = true;
    w->st = st;
    w->sink.send = watch_send;
    w->sink.queued = watch_queued;
    w->sink.end = watch_end;
    /* before subscribing: the hub may send (or end) at once */
    tms_grpc_stream_watch(st);
    tms_grpc_stream_attach(st, w);
    w->sub = tms_push_subscribe(svc->cfg.push, call, &w->sink, &err);
    if (!w->sub) {
        tms_grpc_stream_attach(st, NULL);
        free(w);
        tms_grpc_stream_finish(st, err.code, err.message);
    }
}

static void on_reply(tms_msg_t *msg)
{
    tms_api_call_t *call = (tms_api_call_t *)msg;
    pending_t *p = msg->ctx;
    tms_grpc_stream_t *st = p->st;
    if (st) {
        const tms_op_t *op = tms_op_get(call->op);
        tms_grpc_stream_attach(st, NULL);
        tms_deadlines_remove(p->svc->deadlines, &p->deadline);
        if (call->err.code == TMS_OK && op && op->result == TMS_RESULT_STREAM &&
            tms_grpc_stream_route(st)->kind == KIND_API)
            start_watch(p->svc, st, call);
        else
            render(st, call);
        tms_grpc_stream_flush(st);
    }
    tms_grpc_service_t *svc = p->svc;
    tms_api_call_free(&call); /* p goes with it */
    less_pending(svc);
}

/* A call past its deadline (off the list already): answered DEADLINE_EXCEEDED; the
 * call is still with the actors, and its reply is dropped when it comes. */
static void on_deadline(tms_deadline_t *d, void *ctx)
{
    pending_t *p = (pending_t *)((char *)d - offsetof(pending_t, deadline));
    tms_grpc_stream_t *st = p->st;
    (void)ctx;
    tms_log_warn("deadline_exceeded", "rid=%s op=%s proto=grpc", tms_grpc_stream_request_id(st),
                 tms_api_op_name(p->op));
    tms_grpc_stream_attach(st, NULL);
    p->st = NULL;
    tms_grpc_stream_finish(st, TMS_DEADLINE_EXCEEDED, "deadline exceeded");
    tms_grpc_stream_flush(st);
}

/* The stream went away before the answer: the reply will be dropped, and the actors
 * skip whatever store work of the call has not started yet. */
static void detach(void *ctx, tms_grpc_stream_t *st, void *attached)
{
    pending_t *p = attached;
    (void)ctx;
    (void)st;
    if (p->watch) { /* a watcher went away: the hub forgets it */
        watch_t *w = attached;
        tms_push_unsubscribe(&w->sub);
        free(w);
        return;
    }
    p->cancel->cancelled = true;
    tms_deadlines_remove(p->svc->deadlines, &p->deadline);
    p->st = NULL;
}

/* Hands a decoded call to an actor mailbox with the stream's deadline; the reply
 * comes back to on_reply. A full mailbox answers UNAVAILABLE at once. */
static void post_call(tms_grpc_service_t *svc, tms_grpc_stream_t *st, tms_api_call_t *call,
                      tms_mailbox_t *to)
{
    uint64_t timeout = tms_grpc_stream_time_left_ms(st, svc->cfg.call_timeout_ms);
    tms_msg_t *msg;
    pending_t *p;
    if (!timeout) {
        tms_api_call_free(&call);
        tms_grpc_stream_finish(st, TMS_DEADLINE_EXCEEDED, "deadline exceeded");
        return;
    }
    call->deadline_ms = uv_now(svc->loop) + timeout;
    p = tms_arena_calloc(&call->arena, 1, sizeof(*p));
    p->svc = svc;
    p->st = st;
    p->call = call;
    p->op = call->op;
    p->cancel = tms_api_cancel_attach(call);
    msg = &call->msg;
    msg->kind = TMS_MSG_REQUEST;
    msg->reply_to = svc->replies;
    msg->cont = on_reply;
    msg->ctx = p;
    if (tms_mailbox_post(to, &msg) != 0) {
        tms_api_call_free(&call); /* p with it */
        tms_grpc_stream_finish(st, TMS_UNAVAILABLE, "server overloaded, retry later");
        return;
    }
    svc->pending++;
    tms_grpc_stream_attach(st, p);
    tms_deadlines_add(svc->deadlines, &p->deadline, call->deadline_ms);
}

static char *bearer_of(tms_api_call_t *call, const char *h)
{
    if (strncasecmp(h, "Bearer ", 7) != 0)
        return tms_api_call_strdup(call, ""); /* present but not a bearer token: invalid */
    h += 7;
    while (*h == ' ')
        h++;
    return tms_api_call_strdup(call, h);
}

/* A call without a token from a trusted peer (grpc.trusted_peers). */
static bool from_trusted_peer(const tms_grpc_service_t *svc, const tms_grpc_stream_t *st)
{
    return svc->trusted.n && !tms_grpc_stream_metadata(st, META_AUTHORIZATION) &&
           tms_cidr_list_match(&svc->trusted, tms_grpc_stream_client(st));
}

static void call_api(tms_grpc_service_t *svc, tms_grpc_stream_t *st, const tms_op_t *op,
                     const uint8_t *msg, size_t len)
{
    const char *authorization = tms_grpc_stream_metadata(st, META_AUTHORIZATION);
    tms_error_t err;
    tms_api_call_t *call;
    if (!svc->cfg.gateway) {
        tms_grpc_stream_finish(st, TMS_UNIMPLEMENTED, "this process does not serve the public API");
        return;
    }
    if (svc->cfg.owners && !(svc->cfg.owners & (1u << op->owner))) {
        char m[96];
        const char *service = op->grpc_method + 1;
        snprintf(m, sizeof(m), "this process does not serve %.*s", (int)strcspn(service, "/"),
                 service);
        tms_grpc_stream_finish(st, TMS_UNIMPLEMENTED, m);
        return;
    }
    call = tms_grpc_decode_call(op, msg, len, &err);
    if (!call) {
        tms_grpc_stream_finish(st, err.code, err.message);
        return;
    }
    if (!call->bearer && authorization)
        call->bearer = bearer_of(call, authorization);
    snprintf(call->request_id, sizeof(call->request_id), "%s", tms_grpc_stream_request_id(st));
    snprintf(call->client_addr, sizeof(call->client_addr), "%s", tms_grpc_stream_client(st));
    if (!call->bearer && from_trusted_peer(svc, st)) {
        call->trusted_peer = true;
        tms_counter_add(svc->trusted_calls[op->op], 1);
        tms_log_info("grpc_trusted_call", "rid=%s op=%s trusted_peer=%s", call->request_id,
                     op->name, call->client_addr);
    }
    post_call(svc, st, call, svc->cfg.gateway);
}

/* A call of the internal service: straight to the local actor of its stage and its
 * operation's owner, with the principal and request id the calling process gave it. */
static void call_internal(tms_grpc_service_t *svc, tms_grpc_stream_t *st, const uint8_t *msg,
                          size_t len)
{
    tms_api_call_t *call = tms_internal_decode_call(msg, len);
    tms_mailbox_t *to;
    if (!call) {
        tms_grpc_stream_finish(st, TMS_INVALID_ARGUMENT, "malformed internal call");
        return;
    }
    if (call->request_id[0]) /* one request id in the logs of every process it crossed */
        tms_grpc_stream_set_request_id(st, call->request_id);
    to = tms_op_get(call->op)->owner == TMS_OWNER_TASK && call->msg.op != TMS_STAGE_AUTHENTICATE
             ? svc->cfg.task
             : svc->cfg.auth;
    if (!to) {
        tms_api_call_free(&call);
        tms_grpc_stream_finish(st, TMS_UNIMPLEMENTED,
                               "this process does not run the role of that call");
        return;
    }
    post_call(svc, st, call, to);
}

/* ---- health and reflection ---- */

/* A service of the table (the part of a method path between its slashes), or the
 * health service itself. */
static bool known_service(const char *name)
{
    size_t n, len = strlen(name);
    const tms_op_t *ops = tms_ops(&n);
    if (strcmp(name, "grpc.health.v1.Health") == 0)
        return true;
    for (size_t i = 0; i < n; i++) {
        const char *m = ops[i].grpc_method;
        if (m && strncmp(m + 1, name, len) == 0 && m[len + 1] == '/')
            return true;
    }
    return false;
}

static void health(tms_grpc_stream_t *st, int kind, const uint8_t *msg, size_t len)
{
    char service[128];
    uint8_t *out;
    size_t n;
    int status;
    if (tms_grpc_health_decode(msg, len, service, sizeof(service)) != 0) {
        tms_grpc_stream_finish(st, TMS_INVALID_ARGUMENT, "malformed protobuf request");
        return;
    }
    if (service[0] && !known_service(service)) {
        if (kind == KIND_HEALTH_CHECK) {
            tms_grpc_stream_finish(st, TMS_NOT_FOUND, "unknown service");
            return;
        }
        status = 3; /* SERVICE_UNKNOWN */
    } else {
        status = tms_grpc_stream_stopping(st) ? 2 : 1; /* NOT_SERVING : SERVING */
    }
    tms_grpc_health_encode(status, &out, &n);
    if (!tms_grpc_stream_send(st, out, n)) {
        free(out);
        return;
    }
    free(out);
    if (kind == KIND_HEALTH_CHECK)
        tms_grpc_stream_finish(st, TMS_OK, NULL);
    else
        tms_grpc_stream_watch(st); /* open until the client cancels or the server stops */
}

static void on_reflection(void *ctx, tms_grpc_stream_t *st, const uint8_t *msg, size_t len)
{
    uint8_t *out;
    size_t n;
    (void)ctx;
    if (tms_grpc_reflection_answer(msg, len, &out, &n) != 0) {
        tms_grpc_stream_finish(st, TMS_INVALID_ARGUMENT, "malformed reflection request");
        return;
    }
    tms_grpc_stream_send(st, out, n);
    free(out);
}

/* ---- the handler ---- */

/* Constant time over the credential: both sides are hashed to one length first, so
 * neither the content nor the length of the configured token leaks through timing. */
static bool service_token_ok(tms_grpc_service_t *svc, const char *token)
{
    unsigned char h[crypto_generichash_BYTES];
    if (!svc->cfg.service_token || !token)
        return false;
    crypto_generichash(h, sizeof(h), (const unsigned char *)token, strlen(token), NULL, 0);
    return sodium_memcmp(h, svc->token_hash, sizeof(h)) == 0;
}

static void on_begin(void *ctx, tms_grpc_stream_t *st)
{
    tms_grpc_service_t *svc = ctx;
    const tms_grpc_route_t *route = tms_grpc_stream_route(st);
    if (route->kind == KIND_INTERNAL &&
        !service_token_ok(svc, tms_grpc_stream_metadata(st, META_SERVICE_TOKEN))) {
        tms_grpc_stream_finish(st, TMS_UNAUTHENTICATED,
                               "internal method: missing or wrong service credential");
        return;
    }
    if (tms_grpc_stream_stopping(st) && (route->kind == KIND_API || route->kind == KIND_INTERNAL)) {
        tms_grpc_stream_finish(st, TMS_UNAVAILABLE, "server shutting down");
        return;
    }
    /* Until the actors check its token, a stream may buffer one small message only:
     * operations whose requests are small by nature (they need no token) and token
     * operations called without one. A valid service credential was checked above. */
    if (route->kind == KIND_API) {
        const tms_op_t *op = route->data;
        /* A trusted peer's call without a token is served as it is (the original's
         * gateway sends whole tasks without one): bound by grpc.max_message_bytes. */
        if (op->needs_caller && tms_op_trusted_runs(op) && from_trusted_peer(svc, st))
            return;
        if (op->needs_caller && !tms_grpc_stream_metadata(st, META_AUTHORIZATION))
            tms_grpc_stream_limit_unchecked(st, TMS_UNAUTHENTICATED, "missing bearer token");
        else if (op->body == TMS_BODY_SMALL)
            tms_grpc_stream_limit_unchecked(st, TMS_RESOURCE_EXHAUSTED, NULL);
    } else if (route->kind != KIND_INTERNAL) {
        tms_grpc_stream_limit_unchecked(st, TMS_RESOURCE_EXHAUSTED, NULL);
    }
}

static void on_call(void *ctx, tms_grpc_stream_t *st, const uint8_t *msg, size_t len)
{
    tms_grpc_service_t *svc = ctx;
    const tms_grpc_route_t *route = tms_grpc_stream_route(st);
    switch (route->kind) {
    case KIND_API:
        call_api(svc, st, route->data, msg, len);
        break;
    case KIND_INTERNAL:
        call_internal(svc, st, msg, len);
        break;
    default:
        health(st, route->kind, msg, len);
        break;
    }
}

static size_t busy(void *ctx)
{
    return ((tms_grpc_service_t *)ctx)->pending;
}

tms_grpc_handler_t tms_grpc_service_handler(tms_grpc_service_t *svc)
{
    return (tms_grpc_handler_t){
        .ctx = svc,
        .routes = svc->routes,
        .nroutes = svc->nroutes,
        .metadata = metadata,
        .nmetadata = sizeof(metadata) / sizeof(metadata[0]),
        .begin = on_begin,
        .message = on_reflection,
        .call = on_call,
        .detach = detach,
        .busy = busy,
    };
}

tms_grpc_service_t *tms_grpc_service_new(uv_loop_t *loop, const tms_grpc_service_config_t *cfg)
{
    tms_grpc_service_t *svc = tms_new(tms_grpc_service_t);
    size_t nops;
    const tms_op_t *ops = tms_ops(&nops);
    svc->loop = loop;
    svc->cfg = *cfg;
    svc->deadlines = tms_deadlines_new(loop, on_deadline, svc);
    if (!svc->cfg.call_timeout_ms)
        svc->cfg.call_timeout_ms = DEFAULT_CALL_TIMEOUT_MS;
    if (cfg->service_token) {
        svc->cfg.service_token = tms_strdup(cfg->service_token);
        crypto_generichash(svc->token_hash, sizeof(svc->token_hash),
                           (const unsigned char *)cfg->service_token, strlen(cfg->service_token),
                           NULL, 0);
    }
    if (cfg->trusted_peers && cfg->trusted_peers[0]) {
        char err[200];
        if (tms_cidr_list_parse(cfg->trusted_peers, &svc->trusted, err, sizeof(err)) != 0)
            tms_log_error("grpc_trusted_peers", "error=\"%s\" trusted_peers=none", err);
        for (size_t i = 0; svc->trusted.n && i < nops; i++) {
            char labels[64];
            snprintf(labels, sizeof(labels), "op=\"%s\"", ops[i].name);
            svc->trusted_calls[ops[i].op] =
                tms_metrics_counter("tms_grpc_trusted_calls_total",
                                    "gRPC calls without a token from grpc.trusted_peers, served "
                                    "with the original system's semantics where the op has them",
                                    labels);
        }
    }
    svc->cfg.trusted_peers = NULL; /* parsed into svc->trusted; not kept */
    svc->routes = tms_calloc(nops + NOWN, sizeof(*svc->routes));
    for (size_t i = 0; i < nops; i++) {
        if (ops[i].grpc_method)
            svc->routes[svc->nroutes++] =
                (tms_grpc_route_t){ops[i].grpc_method, TMS_GRPC_UNARY, KIND_API, &ops[i]};
    }
    for (size_t i = 0; i < NOWN; i++)
        svc->routes[svc->nroutes++] = own_routes[i];
    /* Replies are not counted against a mailbox bound; 1 is only the request bound. */
    svc->replies = tms_mailbox_new(loop, "grpc", 1, NULL, svc);
    return svc;
}

void tms_grpc_service_drain(tms_grpc_service_t *svc, void (*drained)(void *arg), void *arg)
{
    if (svc->pending == 0) {
        drained(arg);
        return;
    }
    svc->drained = drained;
    svc->drained_arg = arg;
}

size_t tms_grpc_service_pending(tms_grpc_service_t *svc)
{
    return svc ? svc->pending : 0;
}

void tms_grpc_service_free(tms_grpc_service_t **psvc)
{
    tms_grpc_service_t *svc = psvc ? *psvc : NULL;
    if (!svc)
        return;
    *psvc = NULL;
    if (svc->pending) {
        tms_log_error("grpc_free", "error=\"service freed with calls pending; leaking it\"");
        return;
    }
    tms_mailbox_free(&svc->replies);
    tms_deadlines_free(&svc->deadlines);
    free(svc->routes);
    if (svc->cfg.service_token) {
        sodium_memzero((char *)svc->cfg.service_token, strlen(svc->cfg.service_token));
        free((char *)svc->cfg.service_token);
    }
    free(svc);
}
