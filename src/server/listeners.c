/* A worker's listeners from the configuration: HTTP on http.addr (REST), gRPC on
 * grpc.addr (the public services on a gateway; the internal service on the roles a
 * split deployment calls), and worker 0's /metrics on metrics.addr. */
#include <stdio.h>
#include <string.h>

#include "io/http/listen.h"
#include "server/internal.h"

bool server_serves_grpc(const serve_t *sv)
{
    unsigned m = sv->cfg->server.role_mask;
    bool split = m != TMS_ROLE_ALL;
    if (sv->opt.http_only)
        return false;
    return (m & TMS_ROLE_GATEWAY) || (split && (m & (TMS_ROLE_AUTH | TMS_ROLE_TASK)));
}

static bool serves_metrics(const serve_t *sv)
{
    return !sv->opt.http_only && sv->cfg->metrics.addr[0];
}

/* A taken address stops start-up with one line before any store opens (the
 * listeners check again when they bind). */
int server_check_addresses(const serve_t *sv)
{
    const tms_config_t *cfg = sv->cfg;
    const char *keys[] = {"http.addr", "grpc.addr", "metrics.addr"};
    const char *addrs[] = {cfg->http.addr, server_serves_grpc(sv) ? cfg->grpc.addr : "",
                           serves_metrics(sv) ? cfg->metrics.addr : ""};
    char why[160];
    for (int i = 0; i < 3; i++) {
        if (addrs[i][0] && tms_listener_check(addrs[i], why, sizeof(why)) != 0) {
            fprintf(stderr, "tms: %s: cannot listen on %s: %s\n", keys[i], addrs[i], why);
            return -1;
        }
    }
    return 0;
}

/* http.max_connections_per_address, but at most half of http.max_connections: one
 * address never holds every slot, whatever the two are set to. 0: no cap. */
static size_t per_address_cap(const tms_config_t *cfg)
{
    size_t cap = (size_t)cfg->http.max_connections_per_address;
    size_t half = (size_t)cfg->http.max_connections / 2;
    if (cap && cap > half)
        cap = half ? half : 1;
    return cap;
}

static void on_http_request(void *ctx, tms_http_request_t *req)
{
    tms_server_t *s = ctx;
    tms_counter_add(s->requests, 1);
    tms_rest_handle(s->rest, req);
}

static int listen_http(tms_server_t *s, const char *addr)
{
    const tms_config_t *cfg = s->cfg;
    tms_http_limits_t limits;
    char labels[32];
    snprintf(labels, sizeof(labels), "worker=\"%d\"", s->index);
    s->requests = tms_metrics_counter("tms_worker_http_requests_total",
                                      "HTTP requests taken by each worker loop", labels);
    tms_http_limits_default(&limits);
    limits.max_head_bytes = (size_t)cfg->http.max_head_bytes;
    limits.max_body_bytes = (size_t)cfg->http.max_body_bytes;
    limits.head_timeout_ms = (uint64_t)cfg->http.head_timeout * 1000;
    limits.idle_timeout_ms = (uint64_t)cfg->http.idle_timeout * 1000;
    limits.body_timeout_ms = (uint64_t)cfg->http.body_timeout * 1000;
    limits.send_timeout_ms = (uint64_t)cfg->http.send_timeout * 1000;
    limits.max_connections = (size_t)cfg->http.max_connections;
    limits.max_connections_per_address = per_address_cap(cfg);
    limits.ipv6_prefix = (unsigned)cfg->ratelimit.ipv6_prefix;
    limits.tls = s->sv->tls[SERVER_TLS_HTTP];
    limits.tls_handshake_timeout_ms = (uint64_t)cfg->http.tls_handshake_timeout * 1000;
    if (cfg->http.trusted_proxies[0]) { /* checked by the configuration already */
        char why[200];
        if (tms_cidr_list_parse(cfg->http.trusted_proxies, &s->trusted_proxies, why, sizeof(why)) !=
            0) {
            fprintf(stderr, "tms: http.trusted_proxies: %s\n", why);
            return -1;
        }
        limits.trusted_proxies = &s->trusted_proxies;
    }
    limits.cors_origins = cfg->http.cors_origins[0] ? cfg->http.cors_origins : NULL;
    s->http = tms_http_server_new(s->loop, &limits, on_http_request, s);
    if (tms_http_server_listen(s->http, addr) != 0) {
        fprintf(stderr, "tms: http.addr: cannot listen on %s: %s\n", addr,
                tms_http_server_error(s->http));
        return -1;
    }
    return 0;
}

static int listen_grpc(tms_server_t *s, const char *addr)
{
    const tms_config_t *cfg = s->cfg;
    bool split = cfg->server.role_mask != TMS_ROLE_ALL;
    s->grpc_api = tms_grpc_service_new(
        s->loop, &(tms_grpc_service_config_t){
                     .gateway = s->gateway ? tms_gateway_mailbox(s->gateway) : NULL,
                     .owners = server_grpc_owners(cfg),
                     .trusted_peers = cfg->grpc.trusted_peers,
                     .service_token = split ? cfg->peers.secret : NULL,
                     .auth = split && s->auth ? tms_auth_mailbox(s->auth) : NULL,
                     .task = split && s->task ? tms_task_mailbox(s->task) : NULL,
                     .call_timeout_ms = (uint64_t)cfg->server.request_timeout * 1000,
                     .push = s->push_hub,
                 });
    s->grpc = tms_grpc_server_new(
        s->loop, &(tms_grpc_config_t){
                     .handler = tms_grpc_service_handler(s->grpc_api),
                     .idle_timeout_ms = (uint64_t)cfg->http.idle_timeout * 1000,
                     .max_connections = (size_t)cfg->http.max_connections,
                     .max_connections_per_address = per_address_cap(cfg),
                     .ipv6_prefix = (unsigned)cfg->ratelimit.ipv6_prefix,
                     .max_message_bytes = (size_t)cfg->grpc.max_message_bytes,
                     .max_unauthenticated_message_bytes =
                         (size_t)cfg->grpc.max_unauthenticated_message_bytes,
                     .max_connection_request_bytes = (size_t)cfg->grpc.max_connection_request_bytes,
                     .max_stream_output_bytes = (size_t)cfg->grpc.max_stream_output_bytes,
                     .max_connection_output_bytes = (size_t)cfg->grpc.max_connection_output_bytes,
                     .max_buffered_bytes = (size_t)cfg->grpc.max_buffered_bytes,
                     .receive_timeout_ms = (uint64_t)cfg->grpc.receive_timeout * 1000,
                     .send_timeout_ms = (uint64_t)cfg->grpc.send_timeout * 1000,
                     .tls = s->sv->tls[SERVER_TLS_GRPC],
                     .tls_handshake_timeout_ms = (uint64_t)cfg->http.tls_handshake_timeout * 1000,
                 });
    if (tms_grpc_server_listen(s->grpc, addr) != 0) {
        fprintf(stderr, "tms: grpc.addr: cannot listen on %s: %s\n", addr,
                tms_grpc_server_error(s->grpc));
        return -1;
    }
    return 0;
}

/* /metrics without a token, apart from the public port: worker 0 serves it for the
 * whole process (every counter is process-wide); what a scrape needs, no more. */
static int listen_metrics(tms_server_t *s)
{
    const tms_config_t *cfg = s->cfg;
    tms_http_limits_t ml;
    tms_http_limits_default(&ml);
    ml.listener = "metrics";
    ml.max_body_bytes = 0;
    ml.max_connections = 64;
    ml.head_timeout_ms = (uint64_t)cfg->http.head_timeout * 1000;
    ml.idle_timeout_ms = (uint64_t)cfg->http.idle_timeout * 1000;
    ml.send_timeout_ms = (uint64_t)cfg->http.send_timeout * 1000;
    s->metrics_http = tms_http_server_new(s->loop, &ml, tms_rest_handle_metrics, NULL);
    if (tms_http_server_listen(s->metrics_http, cfg->metrics.addr) != 0) {
        fprintf(stderr, "tms: metrics.addr: cannot listen on %s: %s\n", cfg->metrics.addr,
                tms_http_server_error(s->metrics_http));
        return -1;
    }
    return 0;
}

int server_listen(tms_server_t *s, const char *http_addr, const char *grpc_addr)
{
    if (listen_http(s, http_addr) != 0)
        return -1;
    if (server_serves_grpc(s->sv) && listen_grpc(s, grpc_addr) != 0)
        return -1;
    if (s->index == 0 && serves_metrics(s->sv) && listen_metrics(s) != 0)
        return -1;
    s->http_port = tms_http_server_port(s->http);
    s->grpc_port = s->grpc ? tms_grpc_server_port(s->grpc) : -1;
    return 0;
}
