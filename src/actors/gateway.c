#include "actors/gateway.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/api.h"
#include "core/metrics.h"
#include "core/ratelimit.h"
#include "core/seen.h"
#include "core/task_store.h"

#define RATELIMIT_MAX_KEYS 100000
/* Idempotency-Keys of successful creations remembered for replays over the creation
 * limit: 64 Ki slots of 24 bytes (1.5 MiB), a little less long than the store keeps
 * the key, so that a key the store has forgotten is never let through. */
#define REPLAYS_MAX 65536
#define REPLAYS_TTL_MS (TMS_IDEMPOTENCY_TTL_MS - 60 * 1000)

struct tms_gateway_limits {
    tms_ratelimit_t *api_limit;
    tms_ratelimit_t *login_limit;
    tms_ratelimit_t *create_limit;
    tms_seen_t *replays; /* "<user id> <Idempotency-Key>" of creations that succeeded */
};

struct tms_gateway {
    uv_loop_t *loop;
    tms_mailbox_t *mailbox;
    tms_mailbox_t *auth;
    tms_mailbox_t *task;
    tms_ratelimit_t *api_limit; /* the three of *limits */
    tms_ratelimit_t *login_limit;
    tms_ratelimit_t *create_limit;
    tms_seen_t *replays;
    tms_gateway_limits_t *own_limits; /* NULL when borrowed */
    unsigned ipv6_prefix;
    bool (*authenticate_now)(void *ctx, tms_api_call_t *call);
    void *authenticate_ctx;
    tms_counter_t *limited_api, *limited_login, *limited_create, *table_full;
    size_t inflight; /* calls taken and not yet handed back */
    tms_stopper_t stop;
};

tms_gateway_limits_t *tms_gateway_limits_new(uint32_t api_per_minute, uint32_t login_per_15min,
                                             uint32_t task_create_per_hour)
{
    tms_gateway_limits_t *l = tms_new(tms_gateway_limits_t);
    l->api_limit = tms_ratelimit_new(api_per_minute, 60 * 1000, RATELIMIT_MAX_KEYS);
    l->login_limit = tms_ratelimit_new(login_per_15min, 15 * 60 * 1000, RATELIMIT_MAX_KEYS);
    l->create_limit = tms_ratelimit_new(task_create_per_hour, 3600 * 1000, RATELIMIT_MAX_KEYS);
    l->replays = tms_seen_new(REPLAYS_MAX, REPLAYS_TTL_MS);
    return l;
}

void tms_gateway_limits_free(tms_gateway_limits_t **pl)
{
    tms_gateway_limits_t *l = *pl;
    if (!l)
        return;
    *pl = NULL;
    tms_ratelimit_free(&l->api_limit);
    tms_ratelimit_free(&l->login_limit);
    tms_ratelimit_free(&l->create_limit);
    tms_seen_free(&l->replays);
    free(l);
}

/* The key of a creation's Idempotency-Key in the replay memory. */
static void replay_key(const tms_api_call_t *call, char *out, size_t size)
{
    snprintf(out, size, "%s %s", call->principal.user_id, call->idempotency_key);
}

/* A creation is over: only one that made a task keeps its slot (API.md: a 400 or a
 * replay does not count), and a key that made one lets its replays through later. */
static void settle_create(tms_gateway_t *gw, tms_api_call_t *call)
{
    char key[TMS_USER_ID_LEN + TMS_IDEMPOTENCY_KEY_MAX + 4];
    if (call->ratelimit.slot_taken && (call->err.code != TMS_OK || call->replayed)) {
        call->ratelimit.remaining =
            tms_ratelimit_give_back(gw->create_limit, call->principal.user_id, uv_now(gw->loop));
        call->ratelimit.slot_taken = false;
    }
    if (call->err.code == TMS_OK && call->idempotency_key && call->principal.user_id[0]) {
        replay_key(call, key, sizeof(key));
        tms_seen_add(gw->replays, key, uv_now(gw->loop));
    }
}

/* Hands the call back to the adapter that posted it. */
static void reply_to_origin(tms_gateway_t *gw, tms_api_call_t *call)
{
    const tms_op_t *op = tms_op_get(call->op);
    if (op && op->rate == TMS_RATE_TASK_CREATE)
        settle_create(gw, call);
    call->msg.reply_to = call->origin_reply_to;
    call->msg.cont = call->origin_cont;
    call->msg.ctx = call->origin_ctx;
    tms_mailbox_reply(&call->msg);
    gw->inflight--;
    tms_stopper_check(&gw->stop, gw->mailbox, gw->inflight);
}

static void on_hop_reply(tms_msg_t *msg);

/* Posts the call to an actor for one stage; its reply comes back to on_hop_reply. */
static void hop(tms_gateway_t *gw, tms_api_call_t *call, tms_mailbox_t *to, tms_api_stage_t stage)
{
    tms_msg_t *msg = &call->msg;
    if (!to) { /* a role-only process serves its own roles' operations only */
        tms_error_set(&call->err, TMS_UNIMPLEMENTED, "this process does not run that role");
        reply_to_origin(gw, call);
        return;
    }
    msg->kind = TMS_MSG_REQUEST;
    msg->op = (int)stage;
    msg->reply_to = gw->mailbox;
    msg->cont = on_hop_reply;
    if (tms_mailbox_post(to, &msg) != 0) {
        tms_error_set(&call->err, TMS_UNAVAILABLE, "server overloaded, retry later");
        reply_to_origin(gw, call);
    }
}

static tms_mailbox_t *owner_of(tms_gateway_t *gw, const tms_op_t *op)
{
    return op->owner == TMS_OWNER_TASK ? gw->task : gw->auth;
}

static int limit(tms_gateway_t *gw, tms_api_call_t *call, tms_ratelimit_t *rl, const char *key,
                 const char *what, tms_counter_t *refused);
static int limit_create(tms_gateway_t *gw, tms_api_call_t *call);

static void on_hop_reply(tms_msg_t *msg)
{
    tms_api_call_t *call = (tms_api_call_t *)msg;
    tms_gateway_t *gw = msg->ctx;
    const tms_op_t *op = tms_op_get(call->op);
    if (call->err.code != TMS_OK || msg->op == TMS_STAGE_EXECUTE) {
        reply_to_origin(gw, call);
        return;
    }
    /* Authenticated: the per-user creation limit, then the owning actor. */
    if (op->rate == TMS_RATE_TASK_CREATE && limit_create(gw, call) != 0) {
        reply_to_origin(gw, call);
        return;
    }
    hop(gw, call, owner_of(gw, op), TMS_STAGE_EXECUTE);
}

/* Takes a token of rl for key; 0, or -1 with the call's error set (RESOURCE_EXHAUSTED)
 * and refused counted. The outcome goes into call->ratelimit for the headers. */
static int limit(tms_gateway_t *gw, tms_api_call_t *call, tms_ratelimit_t *rl, const char *key,
                 const char *what, tms_counter_t *refused)
{
    tms_ratelimit_result_t r = tms_ratelimit_take(rl, key, uv_now(gw->loop));
    if (r.limit == 0)
        return 0; /* disabled */
    call->ratelimit.applied = true;
    call->ratelimit.limit = r.limit;
    call->ratelimit.remaining = r.remaining;
    call->ratelimit.reset_s = r.reset_s;
    call->ratelimit.retry_after_s = r.retry_after_s;
    if (r.allowed)
        return 0;
    tms_counter_add(refused, 1);
    if (r.table_full) {
        tms_counter_add(gw->table_full, 1);
        tms_error_set(&call->err, TMS_RESOURCE_EXHAUSTED,
                      "too many clients counted, retry in %llu s",
                      (unsigned long long)r.retry_after_s);
        return -1;
    }
    tms_error_set(&call->err, TMS_RESOURCE_EXHAUSTED, "too many %s, retry in %llu s", what,
                  (unsigned long long)r.retry_after_s);
    return -1;
}

/* The creation limit per user: a slot is taken now and given back when the call does
 * not create a task (settle_create). With the slots used up, a call whose
 * Idempotency-Key already created a task goes on to be answered with that task. */
static int limit_create(tms_gateway_t *gw, tms_api_call_t *call)
{
    char key[TMS_USER_ID_LEN + TMS_IDEMPOTENCY_KEY_MAX + 4];
    const char *user = call->principal.user_id;
    if (limit(gw, call, gw->create_limit, user, "task creations", gw->limited_create) == 0) {
        call->ratelimit.slot_taken = call->ratelimit.applied;
        return 0;
    }
    if (call->idempotency_key) {
        replay_key(call, key, sizeof(key));
        if (tms_seen_has(gw->replays, key, uv_now(gw->loop))) {
            call->err.code = TMS_OK;
            call->err.message[0] = '\0';
            return 0;
        }
    }
    return -1;
}

static void on_message(void *owner, tms_msg_t *msg)
{
    tms_gateway_t *gw = owner;
    tms_api_call_t *call = (tms_api_call_t *)msg;
    const tms_op_t *op;
    char addr[TMS_ADDR_KEY_MAX];
    if (msg->kind == TMS_MSG_STOP) {
        tms_stopper_hold(&gw->stop, msg);
        tms_stopper_check(&gw->stop, gw->mailbox, gw->inflight);
        return;
    }
    call->origin_reply_to = msg->reply_to;
    call->origin_cont = msg->cont;
    call->origin_ctx = msg->ctx;
    /* The adapter's route is kept in origin_*; while actors work on the call,
     * msg->ctx is ours. */
    msg->ctx = gw;
    gw->inflight++;
    if (tms_stopping(&gw->stop)) {
        tms_error_set(&call->err, TMS_UNAVAILABLE, "server stopping, retry later");
        goto reply;
    }
    op = tms_op_get(call->op);
    if (!op) {
        tms_error_set(&call->err, TMS_UNIMPLEMENTED, "unknown operation");
        goto reply;
    }
    /* One IPv6 subscriber holds a whole /64: per-address limits count its prefix. A
     * trusted peer (the original's gateway) speaks for all of its users from one
     * address, and limits them itself: it is not held to one client's share. */
    tms_ratelimit_addr_key(call->client_addr, gw->ipv6_prefix, addr, sizeof(addr));
    if (!call->trusted_peer &&
        limit(gw, call, gw->api_limit, addr, "requests", gw->limited_api) != 0)
        goto reply;
    if (op->rate == TMS_RATE_LOGIN && call->email) {
        char key[TMS_EMAIL_MAX + TMS_ADDR_KEY_MAX + 2];
        size_t n = 0;
        for (const char *p = call->email; *p && n < TMS_EMAIL_MAX; p++) {
            if (!isspace((unsigned char)*p))
                key[n++] = (char)tolower((unsigned char)*p);
        }
        snprintf(key + n, sizeof(key) - n, "|%s", addr);
        if (limit(gw, call, gw->login_limit, key, "login attempts", gw->limited_login) != 0)
            goto reply;
    }
    if (call->trusted_peer && !call->bearer && tms_op_trusted_runs(op)) {
        /* No token to verify: the owning actor applies the op's legacy rule. */
        call->principal.trusted = true;
        hop(gw, call, owner_of(gw, op), TMS_STAGE_EXECUTE);
        return;
    }
    if (op->needs_caller && gw->authenticate_now &&
        gw->authenticate_now(gw->authenticate_ctx, call)) {
        /* Authenticated from the auth actor's caches on this loop: its reply, at once. */
        msg->kind = TMS_MSG_REPLY;
        msg->op = TMS_STAGE_AUTHENTICATE;
        on_hop_reply(msg);
        return;
    }
    hop(gw, call, op->needs_caller ? gw->auth : owner_of(gw, op),
        op->needs_caller ? TMS_STAGE_AUTHENTICATE : TMS_STAGE_EXECUTE);
    return;
reply:
    reply_to_origin(gw, call);
}

tms_gateway_t *tms_gateway_start(uv_loop_t *loop, const tms_gateway_config_t *cfg,
                                 tms_mailbox_t *auth, tms_mailbox_t *task)
{
    tms_gateway_t *gw = tms_new(tms_gateway_t);
    tms_gateway_limits_t *limits = cfg->limits;
    gw->loop = loop;
    gw->auth = auth;
    gw->task = task;
    gw->mailbox = tms_mailbox_new(loop, "gateway", cfg->mailbox_capacity, on_message, gw);
    if (!limits)
        limits = gw->own_limits = tms_gateway_limits_new(cfg->api_per_minute, cfg->login_per_15min,
                                                         cfg->task_create_per_hour);
    gw->api_limit = limits->api_limit;
    gw->login_limit = limits->login_limit;
    gw->create_limit = limits->create_limit;
    gw->replays = limits->replays;
    gw->ipv6_prefix = cfg->ipv6_prefix ? cfg->ipv6_prefix : 64;
    gw->authenticate_now = cfg->authenticate_now;
    gw->authenticate_ctx = cfg->authenticate_ctx;
    gw->limited_api = tms_metrics_counter("tms_ratelimited_total", "calls refused by a rate limit",
                                          "limit=\"api\"");
    gw->limited_login = tms_metrics_counter("tms_ratelimited_total",
                                            "calls refused by a rate limit", "limit=\"login\"");
    gw->limited_create = tms_metrics_counter(
        "tms_ratelimited_total", "calls refused by a rate limit", "limit=\"task_create\"");
    gw->table_full = tms_metrics_counter(
        "tms_ratelimit_table_full_total",
        "calls refused because a rate limit's table was full of live keys (it forgets a key "
        "only once its window is over)",
        "");
    return gw;
}

tms_mailbox_t *tms_gateway_mailbox(tms_gateway_t *gw)
{
    return gw->mailbox;
}

void tms_gateway_free(tms_gateway_t **pgw)
{
    tms_gateway_t *gw = *pgw;
    if (!gw)
        return;
    *pgw = NULL;
    tms_mailbox_free(&gw->mailbox);
    tms_gateway_limits_free(&gw->own_limits);
    free(gw);
}
