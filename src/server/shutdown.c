/* A worker stops in steps; each starts once every callback of the one before has
 * come, so nothing here polls:
 *   listeners  HTTP and gRPC stop accepting and finish their requests (grace)
 *   front      calls still with the actors come back to REST and gRPC; the gateway
 *              stops once the calls it took are answered; the push hub ends its
 *              streams (the listeners already closed SSE connections)
 *   peers      worker 0 only: the other workers have ended (their writes use its
 *              embedded stores and are published by its relays)
 *   relays     worker 0's push part stops taking doorbells; the relays finish the batch in flight
 *              and the inbox trims their step,
 * and the mailer closes: mails waiting come back at once (their events stay pending), sends in
 *              flight finish, so a batch whose events wait for mails ends soon
 *   bus        the bus closes (consumers finish the deliveries they hold)
 *   actors     the notifier and the task actor finish what they hold and stop
 *   auth       the auth actor and the proxies stop (the others ask them to the end)
 *   stores     the store ports this worker owns close, answering what they hold
 * then the rest is freed and the worker's own handles close, which ends its loop.
 * Ports close through their vtables and actors stop on a stop message, whatever the
 * adapter. server.shutdown_grace bounds the listeners; the steps after them get what
 * is left of it, at least a second. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/log.h"
#include "server/internal.h"

enum {
    STEP_LISTENERS,
    STEP_FRONT,
    STEP_PEERS,
    STEP_RELAYS,
    STEP_BUS,
    STEP_ACTORS,
    STEP_AUTH,
    STEP_STORES,
    STEP_DONE,
};

static const char *const step_names[] = {"listeners", "front", "peers",  "relays", "bus",
                                         "actors",    "auth",  "stores", "done"};

#define MIN_AFTER_LISTENERS_MS 1000

/* Guards peers_running and peers_open of worker 0 against the other workers. */
static pthread_mutex_t peers_lock = PTHREAD_MUTEX_INITIALIZER;

static void run_steps(tms_server_t *s);

static void step_done(void *arg)
{
    tms_server_t *s = arg;
    if (--s->step_pending == 0)
        run_steps(s);
}

static void on_actor_stopped(tms_msg_t *msg)
{
    tms_server_t *s = msg->ctx;
    msg->free_fn(msg);
    step_done(s);
}

static void stop_actor(tms_server_t *s, tms_mailbox_t *mb)
{
    if (!mb)
        return;
    s->step_pending++;
    if (tms_stop_send(mb, s->control, on_actor_stopped, s) != 0)
        s->step_pending--; /* already stopped */
}

/* ---- worker 0 waits for the others -------------------------------------------- */

/* Worker 0: another worker ended. */
static void on_peer_ended(uv_async_t *a)
{
    tms_server_t *s = a->data;
    int running;
    pthread_mutex_lock(&peers_lock);
    running = s->peers_running;
    pthread_mutex_unlock(&peers_lock);
    if (running == 0 && s->peers_waited) {
        s->peers_waited = false;
        step_done(s);
    }
}

void server_init_peers(tms_server_t *s)
{
    uv_async_init(s->loop, &s->peers_async, on_peer_ended);
    s->peers_async.data = s;
    uv_unref((uv_handle_t *)&s->peers_async);
    s->handles_open++;
    s->peers_open = true;
}

void server_count_peer(tms_server_t *primary)
{
    pthread_mutex_lock(&peers_lock);
    primary->peers_running++;
    pthread_mutex_unlock(&peers_lock);
}

/* Worker 0: wait for the other workers (step_done when the last has ended). */
static void wait_peers(tms_server_t *s)
{
    pthread_mutex_lock(&peers_lock);
    if (s->peers_running > 0) {
        s->peers_waited = true;
        s->step_pending++;
    }
    pthread_mutex_unlock(&peers_lock);
}

/* A worker other than 0 ended: worker 0 may go on. */
static void peer_ended(tms_server_t *primary)
{
    pthread_mutex_lock(&peers_lock);
    primary->peers_running--;
    if (primary->peers_open)
        uv_async_send(&primary->peers_async);
    pthread_mutex_unlock(&peers_lock);
}

/* ---- the last step ------------------------------------------------------------ */

/* The worker's own handles have closed: its loop ends. A server of tms_server_start
 * is the whole process here, and goes now. */
static void on_handle_closed(uv_handle_t *h)
{
    tms_server_t *s = h->data;
    serve_t *sv = s->sv;
    tms_server_stopped_fn stopped = sv->stopped;
    void *arg = sv->stopped_arg;
    int clean = s->stopping;
    if (--s->handles_open > 0 || !sv->embedded)
        return;
    server_free_tls(sv);
    free(sv->servers);
    free(sv);
    if (stopped)
        stopped(arg, clean);
}

static void close_handle(uv_handle_t *h)
{
    if (h->loop && !uv_is_closing(h))
        uv_close(h, on_handle_closed);
}

/* Nothing is in flight and every port is closed, so what is left can go. Every free
 * here accepts NULL. */
static void finish_shutdown(tms_server_t *s)
{
    tms_metrics_drop_thread_gauges(); /* before what the gauges read goes */
    if (s->primary) { /* borrowed from worker 0, which frees them after this worker ended */
        s->hashers = NULL;
        s->user_cache = NULL;
        s->limits = NULL;
    }
    /* Pools first: what they still run answers into mailboxes that are still alive. */
    tms_workpool_free(&s->hashers);
    tms_workpool_free(&s->mail_pool);
    tms_http_server_free(&s->http);
    tms_http_server_free(&s->metrics_http);
    tms_grpc_server_free(&s->grpc);
    tms_grpc_service_free(&s->grpc_api);
    tms_rest_free(&s->rest);
    tms_gateway_free(&s->gateway);
    tms_notifier_free(&s->notifier);
    tms_task_free(&s->task);
    tms_auth_free(&s->auth);
    tms_remote_actor_free(&s->task_proxy);
    tms_remote_actor_free(&s->auth_proxy);
    if (s->task_client)
        tms_grpc_client_close(&s->task_client, NULL, NULL);
    if (s->auth_client)
        tms_grpc_client_close(&s->auth_client, NULL, NULL);
    if (s->users_relay == s->tasks_relay)
        s->users_relay = NULL;
    tms_relay_free(&s->users_relay);
    tms_relay_free(&s->tasks_relay);
    tms_inbox_trim_free(&s->users_trim);
    tms_inbox_trim_free(&s->tasks_trim);
    tms_push_hub_free(&s->push_hub);
    if (s->primary) {
        s->push = NULL;
        s->tickets = NULL;
    }
    tms_push_shared_free(&s->push);
    tms_ticket_book_free(&s->tickets);
    tms_user_cache_free(&s->user_cache);
    tms_gateway_limits_free(&s->limits);
    tms_mailbox_free(&s->control);
    if (s->primary) {
        peer_ended(s->primary);
    } else if (s->peers_async.loop) {
        pthread_mutex_lock(&peers_lock);
        s->peers_open = false;
        pthread_mutex_unlock(&peers_lock);
        close_handle((uv_handle_t *)&s->peers_async);
    }
    if (s->stopping)
        tms_log_info("stopped", "worker=%d clean=1", s->index);
    /* Last: the final close callback may free s (tms_server_start). */
    close_handle((uv_handle_t *)&s->lag_timer);
    close_handle((uv_handle_t *)&s->deadline_timer);
}

static void close_mailer(tms_server_t *s)
{
    tms_mailer_t *mailer = s->mailer;
    s->mailer = NULL;
    if (mailer) {
        if (s->notifier) /* it may still hold deliveries until the bus step */
            tms_notifier_mailer_closed(s->notifier);
        s->step_pending++;
        mailer->close(mailer, step_done, s);
    }
}

static void close_bus(tms_server_t *s)
{
    tms_event_bus_t *bus = s->bus;
    s->bus = NULL;
    s->kafka = NULL;
    if (bus) {
        s->step_pending++;
        bus->close(bus, step_done, s);
    }
}

/* The store ports this worker owns; each backend goes with its last port. */
static void close_stores(tms_server_t *s)
{
    tms_user_store_t *users = s->own_users ? s->users_store : NULL;
    tms_task_store_t *tasks = s->own_tasks ? s->tasks_store : NULL;
    tms_outbox_t *uo = s->own_users ? s->users_outbox : NULL;
    tms_outbox_t *to = s->own_tasks ? s->tasks_outbox : NULL;
    s->users_store = NULL;
    s->tasks_store = NULL;
    s->users_outbox = s->tasks_outbox = NULL;
    s->users_db = s->tasks_db = NULL;
    s->tasks_pg = NULL;
    s->users_mongo = NULL;
    if (users) {
        s->step_pending++;
        users->close(users, step_done, s);
    }
    if (tasks) {
        s->step_pending++;
        tasks->close(tasks, step_done, s);
    }
    if (uo) {
        s->step_pending++;
        uo->close(uo, step_done, s);
    }
    if (to && to != uo) {
        s->step_pending++;
        to->close(to, step_done, s);
    }
}

/* Starts the next step(s); a step whose stops all completed at once is followed by
 * the next straight away. */
static void run_steps(tms_server_t *s)
{
    do {
        s->step++;
        s->step_pending = 1; /* held while this step's stops are started */
        switch (s->step) {
        case STEP_FRONT:
            if (s->rest) {
                s->step_pending++;
                tms_rest_drain(s->rest, step_done, s);
            }
            if (s->grpc_api) {
                s->step_pending++;
                tms_grpc_service_drain(s->grpc_api, step_done, s);
            }
            stop_actor(s, s->gateway ? tms_gateway_mailbox(s->gateway) : NULL);
            if (s->push_hub) { /* its streams end; reads in flight come back */
                s->step_pending++;
                tms_push_hub_stop(s->push_hub, step_done, s);
            }
            break;
        case STEP_PEERS:
            if (!s->primary)
                wait_peers(s);
            break;
        case STEP_RELAYS:
            if (!s->primary && s->push) { /* every hub has stopped: doorbells end */
                s->step_pending++;
                tms_push_shared_stop(s->push, step_done, s);
            }
            if (s->tasks_relay) {
                s->step_pending++;
                tms_relay_stop(s->tasks_relay, step_done, s);
            }
            if (s->users_relay && s->users_relay != s->tasks_relay) {
                s->step_pending++;
                tms_relay_stop(s->users_relay, step_done, s);
            }
            if (s->tasks_trim) {
                s->step_pending++;
                tms_inbox_trim_stop(s->tasks_trim, step_done, s);
            }
            if (s->users_trim) {
                s->step_pending++;
                tms_inbox_trim_stop(s->users_trim, step_done, s);
            }
            close_mailer(s);
            break;
        case STEP_BUS:
            close_bus(s);
            break;
        case STEP_ACTORS:
            stop_actor(s, s->notifier ? tms_notifier_mailbox(s->notifier) : NULL);
            stop_actor(s, s->task ? tms_task_mailbox(s->task) : NULL);
            break;
        case STEP_AUTH:
            stop_actor(s, s->auth ? tms_auth_mailbox(s->auth) : NULL);
            stop_actor(s, s->auth_proxy ? tms_remote_actor_mailbox(s->auth_proxy) : NULL);
            stop_actor(s, s->task_proxy ? tms_remote_actor_mailbox(s->task_proxy) : NULL);
            break;
        case STEP_STORES:
            close_stores(s);
            break;
        default:
            finish_shutdown(s); /* may free s */
            return;
        }
    } while (--s->step_pending == 0);
}

static void on_deadline(uv_timer_t *t)
{
    tms_server_t *s = t->data;
    /* Acknowledged writes are committed; what is left (outbox events, emails) is
     * redone after the next start. */
    tms_log_warn("stopped", "worker=%d clean=0 waiting=%s", s->index, step_names[s->step]);
    fflush(stderr);
    if (s->sv->embedded)
        abort(); /* a test's or fuzzer's server that cannot stop is a finding */
    _exit(0);
}

/* The listeners have stopped: what follows gets the rest of the grace period. */
static void on_listeners_stopped(void *arg)
{
    tms_server_t *s = arg;
    uint64_t now = uv_now(s->loop);
    if (--s->step_pending > 0)
        return;
    uv_timer_start(
        &s->deadline_timer, on_deadline,
        s->deadline > now + MIN_AFTER_LISTENERS_MS ? s->deadline - now : MIN_AFTER_LISTENERS_MS, 0);
    run_steps(s);
}

/* On the worker's thread after the main thread took SIGINT/SIGTERM, or from
 * tms_server_stop. */
void server_stop(tms_server_t *s)
{
    uint64_t grace_ms = (uint64_t)s->cfg->server.shutdown_grace * 1000;
    s->stopping = 1;
    tms_log_info("worker_stopping", "worker=%d inflight=%zu grace_s=%lld", s->index,
                 tms_http_server_inflight(s->http), (long long)s->cfg->server.shutdown_grace);
    s->deadline = uv_now(s->loop) + grace_ms;
    s->step = STEP_LISTENERS;
    s->step_pending = 3; /* HTTP, gRPC, metrics */
    tms_http_server_stop(s->http, grace_ms, on_listeners_stopped, s);
    /* gRPC: GOAWAY now; streams already open finish. */
    if (s->grpc)
        tms_grpc_server_stop(s->grpc, grace_ms, on_listeners_stopped, s);
    else
        on_listeners_stopped(s);
    /* The metrics listener: what a scrape in progress needs, no more. */
    if (s->metrics_http)
        tms_http_server_stop(s->metrics_http, 1000, on_listeners_stopped, s);
    else
        on_listeners_stopped(s);
}

/* A failed start: stop what did start, as a stop does (the loop then runs it to the
 * end); listeners that were listening close first. */
void server_abort_start(tms_server_t *s)
{
    s->step = STEP_LISTENERS;
    s->step_pending = 1;
    if (s->http) {
        s->step_pending++;
        tms_http_server_stop(s->http, 0, step_done, s);
    }
    if (s->grpc) {
        s->step_pending++;
        tms_grpc_server_stop(s->grpc, 0, step_done, s);
    }
    if (s->metrics_http) {
        s->step_pending++;
        tms_http_server_stop(s->metrics_http, 0, step_done, s);
    }
    step_done(s);
}
