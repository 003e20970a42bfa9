/* One worker's start, in order: its control mailbox and timers, the roles
 * (roles.c), the listeners (listeners.c) and the loop-lag gauge. Also the way a test
 * or fuzzer runs one worker on its own loop (tms_server_start). */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "core/log.h"
#include "server/internal.h"

#define LAG_INTERVAL_MS 100

static double lag_gauge(void *arg)
{
    return atomic_load_explicit(&((tms_server_t *)arg)->lag_max, memory_order_relaxed);
}

/* Measures how late the loop runs a 100 ms timer: the loop-lag gauge that shows a
 * blocked loop (the login-burst test watches it). */
static void on_lag_tick(uv_timer_t *t)
{
    tms_server_t *s = t->data;
    uint64_t now;
    if (++s->ticks % 10 == 0 && !s->stopping)
        server_probe_unhealthy_peers(s); /* once a second */
    now = uv_hrtime();
    double lag = now > s->lag_expected ? (double)(now - s->lag_expected) / 1e9 : 0;
    double decayed = atomic_load_explicit(&s->lag_max, memory_order_relaxed) * 0.9;
    atomic_store_explicit(&s->lag_max, lag > decayed ? lag : decayed, memory_order_relaxed);
    s->lag_expected = now + LAG_INTERVAL_MS * 1000000ull;
}

static void on_control(void *owner, tms_msg_t *msg)
{
    (void)owner; /* only replies are expected here */
    if (msg->free_fn)
        msg->free_fn(msg);
}

/* host:port with the port a listener actually got (the configured one may be 0). */
static void bound_addr(char *out, size_t size, const char *configured, int port)
{
    const char *colon = strrchr(configured, ':');
    snprintf(out, size, "%.*s:%d", (int)(colon - configured), configured, port);
}

/* On worker index's thread: its parts, then its listeners on the ports worker 0 got. */
int server_worker_start(serve_t *sv, int index, uv_loop_t *loop)
{
    tms_server_t *s = &sv->servers[index];
    tms_config_t *cfg = sv->cfg;

    s->sv = sv;
    s->loop = loop;
    s->cfg = cfg;
    s->index = index;
    s->primary = index ? &sv->servers[0] : NULL;
    s->control = tms_mailbox_new(loop, "control", 8, on_control, s);
    uv_timer_init(s->loop, &s->deadline_timer);
    s->deadline_timer.data = s;
    s->handles_open++;
    if (s->primary) /* counted before anything can fail: the stop counts it off */
        server_count_peer(s->primary);
    else
        server_init_peers(s);
    if (server_start_roles(s) != 0 || server_listen(s, index ? sv->http_addr : cfg->http.addr,
                                                    index ? sv->grpc_addr : cfg->grpc.addr) != 0)
        goto fail;
#ifdef TMS_FAULTS
    if (index > 0 && getenv("TMS_FAULT_WORKER_START") &&
        atoi(getenv("TMS_FAULT_WORKER_START")) == index) { /* test-only: a late failure */
        fprintf(stderr, "tms: fault: worker %d refuses to start\n", index);
        goto fail;
    }
#endif
    if (index == 0) { /* read by the other workers, which start after this returns */
        bound_addr(sv->http_addr, sizeof(sv->http_addr), cfg->http.addr, s->http_port);
        bound_addr(sv->grpc_addr, sizeof(sv->grpc_addr), cfg->grpc.addr, s->grpc_port);
    }

    uv_timer_init(s->loop, &s->lag_timer);
    s->lag_timer.data = s;
    s->handles_open++;
    s->lag_expected = uv_hrtime() + LAG_INTERVAL_MS * 1000000ull;
    uv_timer_start(&s->lag_timer, on_lag_tick, LAG_INTERVAL_MS, LAG_INTERVAL_MS);
    uv_unref((uv_handle_t *)&s->lag_timer);
    tms_metrics_gauge_fn("tms_loop_lag_seconds", "how late the event loop ran a 100 ms timer", "",
                         lag_gauge, s);
    tms_log_info("worker_started", "worker=%d port=%d grpc_port=%d", index, s->http_port,
                 s->grpc_port);
    return 0;
fail:
    server_abort_start(s); /* the loop runs it to the end */
    return -1;
}

/* ---- one worker inside a test or fuzz process -------------------------------- */

tms_server_t *tms_server_start(uv_loop_t *loop, tms_config_t *cfg, const tms_server_options_t *opt)
{
    serve_t *sv = calloc(1, sizeof(*sv));
    if (!sv)
        abort();
    sv->cfg = cfg;
    sv->embedded = true;
    if (opt)
        sv->opt = *opt;
    sv->servers = calloc(1, sizeof(tms_server_t));
    if (!sv->servers)
        abort();
    if (server_open_tls(sv) != 0)
        goto fail;
    if (!cfg->auth.jwt_secret[0] && server_make_dir(cfg->data.dir) != 0) {
        fprintf(stderr, "tms: data.dir: cannot create %s: %s\n", cfg->data.dir, strerror(errno));
        goto fail;
    }
    if (server_load_secret(cfg, sv->secret, sizeof(sv->secret)) != 0)
        goto fail;
    if (server_worker_start(sv, 0, loop) != 0)
        return NULL; /* it frees itself once what started has closed */
    sodium_memzero(sv->secret, sizeof(sv->secret)); /* the auth actor has its copy */
    return &sv->servers[0];
fail:
    server_free_tls(sv);
    free(sv->servers);
    free(sv);
    return NULL;
}

void tms_server_stop(tms_server_t *s, tms_server_stopped_fn stopped, void *arg)
{
    s->sv->stopped = stopped;
    s->sv->stopped_arg = arg;
    server_stop(s);
}

int tms_server_http_port(tms_server_t *s)
{
    return s->http_port;
}

tms_http_server_t *tms_server_http(tms_server_t *s)
{
    return s->http;
}

tms_rest_t *tms_server_rest(tms_server_t *s)
{
    return s->rest;
}
