/* What the files of src/server/ share: one worker's parts (struct tms_server), the
 * parts of the process its workers share (serve_t), and the functions one file of the
 * assembly gives another. Not included outside src/server/. */
#ifndef TMS_SERVER_INTERNAL_H
#define TMS_SERVER_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "actors/auth.h"
#include "actors/gateway.h"
#include "actors/notifier.h"
#include "actors/task.h"
#include "core/config.h"
#include "core/inbox_trim.h"
#include "core/mailbox.h"
#include "core/metrics.h"
#include "core/relay.h"
#include "core/user_cache.h"
#include "core/workpool.h"
#include "io/bus/kafka.h"
#include "io/grpc/client.h"
#include "io/grpc/server.h"
#include "io/grpc/service.h"
#include "io/http/http1.h"
#include "io/http/rest.h"
#include "io/mail/smtp.h"
#include "io/remote/actor.h"
#include "io/store/mongo/mongo.h"
#include "io/store/pg/pg.h"
#include "io/store/sqlite/sqlite.h"
#include "io/tls/tls.h"
#include "server/server.h"

typedef struct serve serve_t;

/* The TLS contexts of a process (tls.c), by what uses them. */
enum { SERVER_TLS_HTTP, SERVER_TLS_GRPC, SERVER_TLS_PEERS, SERVER_TLS_N };

/* One worker's parts. Worker 0 owns what every worker shares (the embedded stores,
 * the hash threads, the user cache, the rate limits) and runs the outbox relays, the
 * notifier and the Kafka consumers; the others borrow the shared parts and kick
 * worker 0's relays through stand-ins. Worker 0 stops last. */
struct tms_server {
    serve_t *sv; /* the process's part */
    uv_loop_t *loop;
    tms_config_t *cfg;
    int index;                         /* worker number */
    struct tms_server *primary;        /* worker 0 on the others, else NULL */
    tms_user_cache_t *user_cache;      /* shared by every worker's auth actor */
    tms_gateway_limits_t *limits;      /* shared by every worker's gateway */
    tms_counter_t *requests;           /* tms_worker_http_requests_total{worker="i"} */
    int http_port, grpc_port;          /* bound ports */
    tms_sqlite_t *users_db, *tasks_db; /* the same handle when both URLs name one file */
    tms_pg_t *tasks_pg;                /* tasks.url=postgres://...: instead of tasks_db */
    tms_mongo_t *users_mongo;          /* users.url=mongodb://...: instead of users_db */
    /* The store ports handed to the actors; this worker closes those it owns (worker 0
     * all; the others only their own PostgreSQL pool's). */
    tms_user_store_t *users_store;
    tms_task_store_t *tasks_store;
    tms_outbox_t *users_outbox, *tasks_outbox; /* the same port for one file */
    bool own_users, own_tasks;
    tms_workpool_t *hashers, *mail_pool;
    tms_event_bus_t *bus;
    tms_kafka_bus_t *kafka; /* the bus's adapter when it is Kafka (for /readyz) */
    tms_mailer_t *mailer;
    tms_relay_t *users_relay, *tasks_relay;    /* the same relay for one file */
    tms_inbox_trim_t *users_trim, *tasks_trim; /* worker 0; NULL: none (one file: tasks) */
    tms_auth_t *auth;
    tms_task_actor_t *task;
    /* Task event streams (core/push.h): worker 0's shared part and ticket book (the
     * others borrow them), each gateway worker's hub. */
    tms_push_shared_t *push;
    tms_ticket_book_t *tickets;
    tms_push_hub_t *push_hub;
    tms_notifier_t *notifier;
    tms_gateway_t *gateway;
    tms_rest_t *rest;
    tms_http_server_t *http;
    tms_cidr_list_t trusted_proxies; /* http.trusted_proxies, which http borrows */
    tms_grpc_server_t *grpc;         /* the gRPC listener (grpc.addr) */
    tms_grpc_service_t *grpc_api;    /* what it serves */
    tms_http_server_t *metrics_http; /* metrics.addr: worker 0 only */
    /* Roles that run elsewhere (split deployment): a client and a proxy mailbox each. */
    tms_grpc_client_t *auth_client, *task_client;
    tms_remote_actor_t *auth_proxy, *task_proxy;
    uv_timer_t lag_timer, deadline_timer;
    uint64_t lag_expected;
    unsigned ticks;
    _Atomic double lag_max; /* seconds, decaying maximum; read by any worker's /metrics */
    int stopping;
    /* Shutdown (shutdown.c): the step under way and the callbacks it still waits for;
     * stop replies arrive in the control mailbox. */
    tms_mailbox_t *control;
    int step, step_pending;
    uint64_t deadline;
    int handles_open; /* this struct's own uv handles not yet closed */
    /* Worker 0: the other workers not yet ended, and the async they wake it with. */
    int peers_running;
    bool peers_open, peers_waited;
    uv_async_t peers_async;
};

/* What the workers of one process share with the thread that started them. */
struct serve {
    tms_config_t *cfg;
    tms_server_options_t opt;
    char secret[600];
    tms_server_t *servers;               /* one per worker */
    char http_addr[160], grpc_addr[160]; /* worker 0's bound addresses, for the others */
    /* TLS contexts (NULL: cleartext), one per listener and one for the peers, shared by
     * every worker; SIGHUP reloads them on the main thread. */
    tms_tls_ctx_t *tls[SERVER_TLS_N];
    /* tms_server_start: the process is this one worker on the caller's loop; it frees
     * itself once its handles have closed, then calls stopped(stopped_arg). */
    bool embedded;
    tms_server_stopped_fn stopped;
    void *stopped_arg;
};

/* worker.c: one worker's start, in order (roles, listeners, gauges). 0, or -1 after
 * one line on stderr with the stop of what started under way. */
int server_worker_start(serve_t *sv, int index, uv_loop_t *loop);

/* adapters.c: configuration -> store, bus and mailer adapters. */
const char *server_sqlite_path(const char *url); /* the path of sqlite://path */
int server_make_dir(const char *path);           /* mkdir -p: 0 or -1 (errno) */
/* The openers: the adapter (or 0), or NULL (-1) after one line on stderr naming the
 * key; server_open_users/tasks/bus/mailer set the worker's fields (a SQLite file
 * named by both users.url and tasks.url is opened once). */
tms_sqlite_t *server_open_sqlite(uv_loop_t *loop, const char *key, const char *url,
                                 size_t queue_capacity);
tms_mongo_t *server_open_mongo(uv_loop_t *loop, const tms_config_t *cfg);
int server_open_users(tms_server_t *s, tms_user_store_t **store, tms_outbox_t **outbox);
int server_open_tasks(tms_server_t *s, tms_task_store_t **store, tms_outbox_t **outbox);
int server_open_bus(tms_server_t *s);
int server_open_mailer(tms_server_t *s);

/* The hash threads for auth.hash_threads: at most the CPUs this process may run on
 * less one, at least 1. */
int server_hash_threads(int64_t configured);
/* The stores' migrations on the calling thread: 0, or -1 with one line in err (not
 * printed). */
int server_migrate_stores(const tms_config_t *cfg, char *err, size_t err_len);
tms_smtp_options_t server_smtp_options(const tms_config_t *cfg);
bool server_smtp_url(const char *url);

/* roles.c: the shared parts, then the actors of server.roles and a proxy for each
 * role that runs elsewhere. 0 or -1 (said). */
int server_start_roles(tms_server_t *s);
/* roles.c: probe the peers that are down (once a second, from the lag tick). */
void server_probe_unhealthy_peers(tms_server_t *s);
/* roles.c: the services a gateway of this process serves over gRPC, as a set of
 * owners (tms_grpc_service_config_t.owners): 0 (all) with the gateway role; without
 * it the roles run here (auth: AuthService, task: TaskService), served only in
 * migration mode (grpc.trusted_peers). */
unsigned server_grpc_owners(const tms_config_t *cfg);

/* listeners.c: HTTP on http_addr, gRPC on grpc_addr when this process serves it, and
 * metrics.addr on worker 0. 0 or -1 (said). */
int server_listen(tms_server_t *s, const char *http_addr, const char *grpc_addr);
/* listeners.c: whether this process listens on grpc.addr. */
bool server_serves_grpc(const serve_t *sv);
/* listeners.c: a taken http.addr, grpc.addr or metrics.addr: 0 or -1 (said). */
int server_check_addresses(const serve_t *sv);

/* secrets.c: auth.jwt_secret, or the one kept in data.dir (made once). 0 or -1 (said). */
int server_load_secret(const tms_config_t *cfg, char *out, size_t size);

/* tls.c: the contexts of the settings into sv->tls (0, or -1 after one line on
 * stderr, none kept), their reload (SIGHUP) and their end. */
int server_open_tls(serve_t *sv);
void server_reload_tls(serve_t *sv);
void server_free_tls(serve_t *sv);

/* shutdown.c: stop in steps (after a signal, or tms_server_stop). */
void server_stop(tms_server_t *s);
/* shutdown.c: a start that failed stops what started, as a stop does. */
void server_abort_start(tms_server_t *s);
/* shutdown.c: worker 0's count of the others, taken before anything can fail. */
void server_count_peer(tms_server_t *primary);
void server_init_peers(tms_server_t *s);

#endif
