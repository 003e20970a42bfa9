#include "io/remote/actor.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/api.h"
#include "core/log.h"
#include "core/status.h"
#include "io/grpc/internal.h"

#define DEFAULT_TIMEOUT_MS 5000
#define CANCEL_SCAN_MS 50 /* how soon a client's reset reaches the peer */

typedef struct job job_t;

struct job {
    job_t *prev, *next;
    tms_remote_actor_t *r;
    tms_api_call_t *call;
    tms_grpc_client_call_t *handle;
    bool cancel_sent;
};

struct tms_remote_actor {
    uv_loop_t *loop;
    tms_remote_actor_config_t cfg;
    char name[16];
    tms_mailbox_t *mailbox;
    uv_timer_t scan; /* while calls are in flight: looks for cancelled ones */
    job_t *jobs;
    size_t inflight;
    tms_stopper_t stop;
};

static void job_unlink(job_t *job)
{
    tms_remote_actor_t *r = job->r;
    if (job->prev)
        job->prev->next = job->next;
    else
        r->jobs = job->next;
    if (job->next)
        job->next->prev = job->prev;
    r->inflight--;
    if (r->inflight == 0)
        uv_timer_stop(&r->scan);
}

/* The answer of a hop that failed, in the terms of the caller's own client. */
static void hop_failed(tms_remote_actor_t *r, tms_api_call_t *call, int status, const char *message)
{
    switch (status) {
    case TMS_DEADLINE_EXCEEDED:
        tms_error_set(&call->err, TMS_DEADLINE_EXCEEDED, "deadline exceeded");
        break;
    case TMS_CANCELLED:
        tms_error_set(&call->err, TMS_CANCELLED, "cancelled by the client");
        break;
    default:
        /* UNAUTHENTICATED here is our own credential refused, never the user's
         * token: a configuration error, so the caller sees a dependency down. */
        tms_error_set(&call->err, TMS_UNAVAILABLE, "%s service unavailable", r->name);
        tms_log_warn("peer_call_failed", "peer=%s op=%s code=%s message=\"%.120s\" rid=%s", r->name,
                     tms_api_op_name(call->op), tms_status_name((tms_status_t)status), message,
                     call->request_id);
    }
}

static void on_done(void *ctx, int status, const char *message, const uint8_t *resp,
                    size_t resp_len)
{
    job_t *job = ctx;
    tms_remote_actor_t *r = job->r;
    tms_api_call_t *call = job->call;
    job_unlink(job); /* in the call's arena: goes with the call */
    if (status != TMS_OK)
        hop_failed(r, call, status, message);
    else if (tms_internal_decode_result(call, resp, resp_len) != 0)
        hop_failed(r, call, TMS_INTERNAL, "malformed answer");
    tms_mailbox_reply(&call->msg);
    tms_stopper_check(&r->stop, r->mailbox, r->inflight);
}

static void on_scan(uv_timer_t *t)
{
    tms_remote_actor_t *r = t->data;
    /* O(calls in flight) every 50 ms; fine for the hundreds a process holds. */
    for (job_t *job = r->jobs, *next; job; job = next) {
        next = job->next; /* robust even if a client ended the call at once */
        if (!job->cancel_sent && job->call->cancel && job->call->cancel->cancelled) {
            job->cancel_sent = true;
            tms_grpc_client_cancel(job->handle);
        }
    }
}

static void on_message(void *owner, tms_msg_t *msg)
{
    tms_remote_actor_t *r = owner;
    tms_api_call_t *call = (tms_api_call_t *)msg;
    uint64_t now = uv_now(r->loop);
    uint64_t deadline;
    uint8_t *req;
    size_t len;
    job_t *job;
    if (msg->kind == TMS_MSG_STOP) {
        tms_stopper_hold(&r->stop, msg);
        tms_stopper_check(&r->stop, r->mailbox, r->inflight);
        return;
    }
    if (msg->op != TMS_STAGE_AUTHENTICATE && msg->op != TMS_STAGE_EXECUTE) {
        if (msg->free_fn)
            msg->free_fn(msg);
        return;
    }
    if (tms_stopping(&r->stop)) {
        tms_api_fail(call, TMS_UNAVAILABLE, "server stopping, retry later");
        return;
    }
    if (tms_api_call_abandoned(call, now)) {
        const char *why;
        tms_status_t code = tms_api_abandoned_status(call, &why);
        tms_api_fail(call, code, "%s", why);
        return;
    }
    deadline = call->deadline_ms ? call->deadline_ms : now + r->cfg.default_timeout_ms;
    tms_internal_encode_call(call, &req, &len); /* in the call's arena */
    job = tms_arena_calloc(&call->arena, 1, sizeof(*job));
    job->r = r;
    job->call = call;
    job->next = r->jobs;
    if (r->jobs)
        r->jobs->prev = job;
    r->jobs = job;
    r->inflight++;
    if (call->cancel && !uv_is_active((uv_handle_t *)&r->scan))
        uv_timer_start(&r->scan, on_scan, CANCEL_SCAN_MS, CANCEL_SCAN_MS);
    /* done never runs from inside this call, so job is still ours here. */
    job->handle = tms_grpc_client_call(r->cfg.client, TMS_INTERNAL_CALL_PATH, req, len, deadline,
                                       tms_internal_idempotent(call), on_done, job);
}

tms_remote_actor_t *tms_remote_actor_start(uv_loop_t *loop, const tms_remote_actor_config_t *cfg)
{
    tms_remote_actor_t *r = tms_new(tms_remote_actor_t);
    r->loop = loop;
    r->cfg = *cfg;
    if (!r->cfg.default_timeout_ms)
        r->cfg.default_timeout_ms = DEFAULT_TIMEOUT_MS;
    snprintf(r->name, sizeof(r->name), "%s", cfg->name);
    r->cfg.name = r->name;
    uv_timer_init(loop, &r->scan);
    r->scan.data = r;
    r->mailbox = tms_mailbox_new(loop, r->name, cfg->mailbox_capacity, on_message, r);
    tms_mailbox_export_depth(r->mailbox);
    return r;
}

tms_mailbox_t *tms_remote_actor_mailbox(tms_remote_actor_t *r)
{
    return r->mailbox;
}

size_t tms_remote_actor_inflight(tms_remote_actor_t *r)
{
    return r ? r->inflight : 0;
}

static void on_timer_closed(uv_handle_t *h)
{
    free(h->data);
}

void tms_remote_actor_free(tms_remote_actor_t **pr)
{
    tms_remote_actor_t *r = *pr;
    if (!r)
        return;
    *pr = NULL;
    tms_mailbox_free(&r->mailbox);
    uv_close((uv_handle_t *)&r->scan, on_timer_closed);
}
