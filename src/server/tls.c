/* The TLS contexts of the settings: one per listener (http.tls_*, grpc.tls_*, or
 * peers.tls_* on a split role that serves only the internal service) and one for the
 * clients of the peers, shared by every worker; SIGHUP reloads them. config.c has
 * checked how the settings combine; the files are read and checked here, before
 * anything else starts. */
#include <stdio.h>
#include <string.h>

#include "core/log.h"
#include "server/internal.h"

int server_open_tls(serve_t *sv)
{
    const tms_config_t *cfg = sv->cfg;
    unsigned m = cfg->server.role_mask;
    bool split = m != TMS_ROLE_ALL;
    char err[1400], about[400];
    tms_tls_options_t o[SERVER_TLS_N];
    memset(o, 0, sizeof(o));
    if (cfg->http.tls_cert[0])
        o[SERVER_TLS_HTTP] = (tms_tls_options_t){
            .section = "http",
            .cert = cfg->http.tls_cert,
            .key = cfg->http.tls_key,
            .ca = cfg->http.tls_client_ca,
            .protocols = cfg->http.tls_protocols,
            .ciphers = cfg->http.tls_ciphers,
            .alpn = "http/1.1",
        };
    if (server_serves_grpc(sv) && split && !(m & TMS_ROLE_GATEWAY) && cfg->peers.tls_cert[0])
        /* The internal service alone: only peers with a certificate from peers.tls_ca. */
        o[SERVER_TLS_GRPC] = (tms_tls_options_t){
            .section = "peers",
            .label = "grpc",
            .cert = cfg->peers.tls_cert,
            .key = cfg->peers.tls_key,
            .ca = cfg->peers.tls_ca,
            .alpn = "h2",
        };
    else if (server_serves_grpc(sv) && cfg->grpc.tls_cert[0])
        o[SERVER_TLS_GRPC] = (tms_tls_options_t){
            .section = "grpc",
            .cert = cfg->grpc.tls_cert,
            .key = cfg->grpc.tls_key,
            .ca = cfg->grpc.tls_client_ca,
            .protocols = cfg->grpc.tls_protocols,
            .ciphers = cfg->grpc.tls_ciphers,
            .alpn = "h2",
        };
    if (split && cfg->peers.tls_cert[0] && (cfg->peers.auth[0] || cfg->peers.task[0]))
        o[SERVER_TLS_PEERS] = (tms_tls_options_t){
            .section = "peers",
            .label = "peers",
            .client = true,
            .cert = cfg->peers.tls_cert,
            .key = cfg->peers.tls_key,
            .ca = cfg->peers.tls_ca,
            .alpn = "h2",
        };
    for (int i = 0; i < SERVER_TLS_N; i++) {
        if (!o[i].section)
            continue;
        sv->tls[i] = tms_tls_ctx_new(&o[i], err, sizeof(err));
        if (!sv->tls[i]) {
            fprintf(stderr, "tms: %s\n", err);
            server_free_tls(sv);
            return -1;
        }
        tms_tls_ctx_describe(sv->tls[i], about, sizeof(about));
        tms_log_info("tls", "context=%s %s", tms_tls_ctx_label(sv->tls[i]), about);
    }
    return 0;
}

/* New certificates for new connections; a file that does not pass keeps the old one. */
void server_reload_tls(serve_t *sv)
{
    char err[1400], about[400];
    int n = 0;
    for (int i = 0; i < SERVER_TLS_N; i++) {
        tms_tls_ctx_t *t = sv->tls[i];
        if (!t)
            continue;
        n++;
        if (tms_tls_ctx_reload(t, err, sizeof(err)) != 0) {
            char q[1500];
            tms_log_error("tls_reload_failed", "context=%s kept=old error=%s", tms_tls_ctx_label(t),
                          tms_log_quote(q, sizeof(q), err, strlen(err)));
            continue;
        }
        tms_tls_ctx_describe(t, about, sizeof(about));
        tms_log_info("tls_reloaded", "context=%s %s", tms_tls_ctx_label(t), about);
    }
    if (n == 0)
        tms_log_info("reload", "tls=none");
}

void server_free_tls(serve_t *sv)
{
    for (int i = 0; i < SERVER_TLS_N; i++)
        tms_tls_ctx_free(&sv->tls[i]);
}
