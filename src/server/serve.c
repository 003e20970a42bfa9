/* `tms serve`: the process around the workers. It makes data.dir and holds its lock,
 * checks the listen addresses, loads the JWT secret and the TLS contexts (tls.c),
 * reloading them on SIGHUP, then runs server.workers loops
 * on their own threads (core/workers.h) while this thread only takes the signals. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include <sodium.h>

#include "core/log.h"
#include "core/ops.h"
#include "core/workers.h"
#include "server/internal.h"

static int start_worker(void *arg, tms_workers_t *w, int index, uv_loop_t *loop)
{
    (void)w;
    return server_worker_start(arg, index, loop);
}

static void on_worker_stop(void *arg, int index)
{
    server_stop(&((serve_t *)arg)->servers[index]);
}

static int on_worker_finished(void *arg, int index)
{
    return ((serve_t *)arg)->servers[index].rest ? 1 : 0; /* ended without a full shutdown */
}

static void on_started(void *arg, int nworkers)
{
    serve_t *sv = arg;
    tms_server_t *s = &sv->servers[0];
    tms_log_info("listening",
                 "proto=http addr=%s port=%d grpc_port=%d workers=%d version=%s roles=%s "
                 "users=%s tasks=%s events=%s mail=%s data_dir=%s",
                 sv->cfg->http.addr, s->http_port, s->grpc_port, nworkers, TMS_VERSION,
                 sv->cfg->server.roles,
                 !s->auth         ? "-"
                 : s->users_mongo ? "mongodb"
                                  : "sqlite",
                 !(s->task || s->notifier) ? "-"
                 : s->tasks_pg             ? "postgres"
                                           : "sqlite",
                 sv->cfg->events.brokers[0] ? "kafka" : "local",
                 !s->mailer                           ? "-"
                 : server_smtp_url(sv->cfg->mail.url) ? "smtp"
                                                      : "maildir",
                 sv->cfg->data.dir);
    sodium_memzero(sv->secret, sizeof(sv->secret)); /* every auth actor has its copy */
    if (sv->cfg->grpc.trusted_peers[0] && s->grpc) {
        char q[1100];
        const char *tp = sv->cfg->grpc.trusted_peers;
        unsigned o = server_grpc_owners(sv->cfg);
        tms_log_warn("trusted_peers",
                     "trusted_peers=%s services=%s note=\"gRPC calls without a token from these "
                     "addresses are served with the original system's semantics: no caller, no "
                     "permission checks (migration only; see docs/OPERATIONS.md)\"",
                     tms_log_quote(q, sizeof(q), tp, strlen(tp)),
                     o == 1u << TMS_OWNER_AUTH   ? "AuthService"
                     : o == 1u << TMS_OWNER_TASK ? "TaskService"
                                                 : "AuthService,TaskService");
    }
}

static void on_reload(void *arg)
{
    server_reload_tls(arg);
}

static void on_stopping(void *arg, int signum)
{
    serve_t *sv = arg;
    tms_log_info("stopping", "signal=%d workers=%lld grace_s=%lld", signum,
                 (long long)sv->cfg->server.workers, (long long)sv->cfg->server.shutdown_grace);
}

/* One `tms serve` per data dir: two would run relays over one SQLite file and split
 * its Maildir. An flock on <data.dir>/tms.lock (holding the pid, for the message) is
 * kept until exit; the kernel drops it however the process ends. 0 or -1 (said). */
static int lock_data_dir(const tms_config_t *cfg)
{
    char path[1100], pid[32] = "";
    ssize_t n;
    int fd;
    snprintf(path, sizeof(path), "%s/tms.lock", cfg->data.dir);
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        fprintf(stderr, "tms: data.dir: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        n = read(fd, pid, sizeof(pid) - 1);
        pid[n > 0 ? strcspn(pid, "\n") : 0] = '\0';
        fprintf(stderr,
                "tms: data.dir: %s is in use by another tms serve (pid %s); each instance "
                "needs its own data.dir\n",
                cfg->data.dir, pid[0] ? pid : "unknown");
        close(fd);
        return -1;
    }
    if (ftruncate(fd, 0) == 0)
        dprintf(fd, "%ld\n", (long)getpid());
    return 0; /* fd stays open: the lock lives as long as the process */
}

int tms_server_serve(tms_config_t *cfg)
{
    serve_t *sv = calloc(1, sizeof(*sv));
    tms_workers_hooks_t hooks = {
        .start = start_worker,
        .stop = on_worker_stop,
        .finished = on_worker_finished,
        .started = on_started,
        .stopping = on_stopping,
        .reload = on_reload,
        .arg = sv,
    };
    int rc = 1;

    if (!sv)
        return 1;
    sv->cfg = cfg;
    signal(SIGPIPE, SIG_IGN);
    if (server_open_tls(sv) != 0)
        goto out;
    if (server_make_dir(cfg->data.dir) != 0) {
        fprintf(stderr, "tms: data.dir: cannot create %s: %s\n", cfg->data.dir, strerror(errno));
        goto out;
    }
    if (lock_data_dir(cfg) != 0 || server_check_addresses(sv) != 0 ||
        server_load_secret(cfg, sv->secret, sizeof(sv->secret)) != 0)
        goto out;
    sv->servers = calloc((size_t)cfg->server.workers, sizeof(tms_server_t));
    if (!sv->servers)
        goto out;
    /* Lines are buffered and written by a log thread while the workers run, and all
     * written out before this returns (core/log.h). */
    if (tms_log_start_writer() != 0)
        fprintf(stderr, "tms: cannot start the log thread; logging unbuffered\n");
    tms_metrics_process_register(); /* on this thread: no worker label */
    rc = tms_workers_run((int)cfg->server.workers, &hooks);
    tms_log_stop_writer();
    tms_metrics_reset();
out:
    sodium_memzero(sv->secret, sizeof(sv->secret));
    server_free_tls(sv);
    free(sv->servers);
    free(sv);
    return rc;
}
