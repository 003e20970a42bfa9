/* Configuration -> adapters: which store, bus and mailer a URL selects, opened with
 * the options of its section. Shared by the workers of `tms serve` and by the one-shot
 * commands (admin.c), so both reach a database the same way. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "core/events.h"
#include "io/bus/local.h"
#include "io/mail/maildir.h"
#include "server/internal.h"

const char *server_sqlite_path(const char *url)
{
    return url + strlen("sqlite://");
}

int server_make_dir(const char *path)
{
    char buf[1024];
    size_t n = strlen(path);
    if (n >= sizeof(buf))
        return -1;
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] == '/' || buf[i] == '\0') {
            char c = buf[i];
            buf[i] = '\0';
            if (mkdir(buf, 0700) != 0 && errno != EEXIST)
                return -1;
            buf[i] = c;
        }
    }
    return 0;
}

tms_sqlite_t *server_open_sqlite(uv_loop_t *loop, const char *key, const char *url,
                                 size_t queue_capacity)
{
    char err[512];
    tms_sqlite_t *db =
        tms_sqlite_open(loop, server_sqlite_path(url), queue_capacity, err, sizeof(err));
    if (!db)
        fprintf(stderr, "tms: %s: %s\n", key, err);
    return db;
}

tms_mongo_t *server_open_mongo(uv_loop_t *loop, const tms_config_t *cfg)
{
    char err[512];
    tms_mongo_t *m = tms_mongo_open(
        loop, cfg->users.url,
        &(tms_mongo_options_t){
            .pool_size = (int)cfg->users.pool_size,
            .server_selection_timeout_ms = (int)cfg->users.server_selection_timeout_ms,
            .socket_timeout_ms = (int)cfg->users.socket_timeout_ms,
            .queue_capacity = (size_t)cfg->server.mailbox_capacity,
        },
        err, sizeof(err));
    if (!m)
        fprintf(stderr, "tms: users.url: %s\n", err);
    return m;
}

/* The migrations of the stores, on the calling thread: PostgreSQL's for tasks.url
 * and SQLite's for users.url beside it (MongoDB has none), or the SQLite file of
 * tasks.url. */
int server_migrate_stores(const tms_config_t *cfg, char *err, size_t err_len)
{
    if (!tms_pg_url(cfg->tasks.url))
        return tms_sqlite_migrate(server_sqlite_path(cfg->tasks.url), err, err_len);
    if (!tms_mongo_url(cfg->users.url) &&
        tms_sqlite_migrate(server_sqlite_path(cfg->users.url), err, err_len) != 0)
        return -1;
    return tms_pg_migrate_sync(cfg->tasks.url, err, err_len);
}

/* The user store and its outbox: MongoDB for users.url=mongodb://..., else SQLite. */
int server_open_users(tms_server_t *s, tms_user_store_t **store, tms_outbox_t **outbox)
{
    const tms_config_t *cfg = s->cfg;
    if (tms_mongo_url(cfg->users.url)) {
        if (!s->users_mongo && !(s->users_mongo = server_open_mongo(s->loop, cfg)))
            return -1;
        *store = tms_mongo_user_store(s->users_mongo);
        *outbox = tms_mongo_outbox(s->users_mongo);
        return 0;
    }
    if (!s->users_db && !(s->users_db = server_open_sqlite(s->loop, "users.url", cfg->users.url,
                                                           (size_t)cfg->server.mailbox_capacity)))
        return -1;
    *store = tms_sqlite_user_store(s->users_db);
    *outbox = tms_sqlite_outbox(s->users_db);
    return 0;
}

/* The task store and its outbox: PostgreSQL for tasks.url=postgres://..., else SQLite
 * (the users' file when both URLs name one). */
int server_open_tasks(tms_server_t *s, tms_task_store_t **store, tms_outbox_t **outbox)
{
    const tms_config_t *cfg = s->cfg;
    char err[512];
    if (tms_pg_url(cfg->tasks.url)) {
        s->tasks_pg = tms_pg_open(
            s->loop, cfg->tasks.url,
            &(tms_pg_options_t){
                .pool_size = (int)cfg->tasks.pool_size,
                .pipeline_depth = (int)cfg->tasks.pipeline_depth,
                .statement_timeout_ms = (int)cfg->tasks.statement_timeout_ms,
                .queue_capacity = (size_t)cfg->server.mailbox_capacity,
                .accept_async_commit = strcmp(cfg->tasks.synchronous_commit, "accept-off") == 0,
                .migrate = strcmp(cfg->tasks.migrate, "auto") == 0 && !s->primary,
                .purge_sent = !s->primary, /* one process-wide, as the migrations */
            },
            err, sizeof(err));
        if (!s->tasks_pg) {
            fprintf(stderr, "tms: tasks.url: %s\n", err);
            return -1;
        }
        *store = tms_pg_task_store(s->tasks_pg);
        *outbox = tms_pg_outbox(s->tasks_pg);
        return 0;
    }
    if (!s->tasks_db && s->users_db &&
        strcmp(server_sqlite_path(cfg->users.url), server_sqlite_path(cfg->tasks.url)) == 0)
        s->tasks_db = s->users_db;
    else if (!s->tasks_db &&
             !(s->tasks_db = server_open_sqlite(s->loop, "tasks.url", cfg->tasks.url,
                                                (size_t)cfg->server.mailbox_capacity)))
        return -1;
    *store = tms_sqlite_task_store(s->tasks_db);
    *outbox = tms_sqlite_outbox(s->tasks_db);
    return 0;
}

/* Kafka for events.brokers on worker 0; else (and on the other workers, whose writes
 * worker 0's relays publish) an in-process bus. */
int server_open_bus(tms_server_t *s)
{
    static const char *const topics[] = {TMS_TOPIC_NOTIFICATIONS, TMS_TOPIC_USER_DELETED,
                                         TMS_TOPIC_COMPENSATE, TMS_PUSH_TOPIC, NULL};
    const tms_config_t *cfg = s->cfg;
    char err[512];
    if (!cfg->events.brokers[0] || s->primary) {
        s->bus = tms_local_bus_new_with(s->loop, &(tms_local_bus_options_t){
                                                     .dlq_after = (int)cfg->events.dlq_after,
                                                     .retry_ms = (int)cfg->events.retry_ms,
                                                 });
        return 0;
    }
    s->kafka = tms_kafka_bus_new(s->loop,
                                 &(tms_kafka_options_t){
                                     .brokers = cfg->events.brokers,
                                     .client_id = cfg->events.client_id,
                                     .ns = cfg->events.ns,
                                     .topics = topics,
                                     .partitions = (int)cfg->events.partitions,
                                     .replication = (int)cfg->events.replication,
                                     .dlq_after = (int)cfg->events.dlq_after,
                                     .retry_ms = (int)cfg->events.retry_ms,
                                     .publish_timeout_ms = (int)cfg->events.publish_timeout_ms,
                                     .security_protocol = cfg->events.security_protocol,
                                     .tls_ca = cfg->events.tls_ca,
                                     .tls_cert = cfg->events.tls_cert,
                                     .tls_key = cfg->events.tls_key,
                                 },
                                 err, sizeof(err));
    if (!s->kafka) {
        fprintf(stderr, "tms: events.brokers: %s\n", err);
        return -1;
    }
    s->bus = tms_kafka_bus_port(s->kafka);
    return 0;
}

tms_smtp_options_t server_smtp_options(const tms_config_t *cfg)
{
    return (tms_smtp_options_t){
        .url = cfg->mail.url,
        .from = cfg->mail.from,
        .domain = strchr(cfg->mail.from, '@') + 1,
        .starttls = cfg->mail.starttls,
        .dlq_dir = cfg->mail.dlq_dir,
        .ca_file = cfg->mail.ca_file,
        .timeout_ms = cfg->mail.timeout_ms,
        .max_concurrent = (int)cfg->mail.max_concurrent,
        .queue_capacity = (size_t)cfg->server.mailbox_capacity,
        .retry_attempts = (int)cfg->mail.retry_attempts,
        .retry_base_ms = cfg->mail.retry_base_ms,
        .retry_max_ms = cfg->mail.retry_max_ms,
        .breaker_window = (int)cfg->mail.breaker_window,
        .breaker_threshold_pct = (int)cfg->mail.breaker_threshold,
        .breaker_cooldown_ms = cfg->mail.breaker_cooldown_ms,
    };
}

bool server_smtp_url(const char *url)
{
    return strncmp(url, "smtp://", 7) == 0 || strncmp(url, "smtps://", 8) == 0;
}

/* The mailer of mail.url (worker 0 only: it alone runs the notifier), SMTP or
 * Maildir, sending on its own pool. Its threads run at nice MAIL_NICE: rendering and
 * writing a mail (fsyncs for Maildir) then takes the CPU the loops leave, so a
 * burst of assigning creates is answered first and its mails follow (issue 20). */
#define MAIL_NICE 10
int server_open_mailer(tms_server_t *s)
{
    const tms_config_t *cfg = s->cfg;
    char err[512];
    const char *maildir = cfg->mail.url + strlen("maildir://");
    s->mail_pool =
        tms_workpool_new_nice("mail", 2, (size_t)cfg->server.mailbox_capacity, MAIL_NICE);
    if (server_smtp_url(cfg->mail.url)) {
        tms_smtp_options_t opt = server_smtp_options(cfg);
        s->mailer = tms_smtp_new(s->loop, &opt, s->mail_pool, err, sizeof(err));
    } else {
        s->mailer =
            tms_maildir_new(s->loop, maildir, cfg->mail.from, strchr(cfg->mail.from, '@') + 1,
                            s->mail_pool, (size_t)cfg->server.mailbox_capacity, err, sizeof(err));
    }
    if (!s->mailer) {
        fprintf(stderr, "tms: mail.url: %s\n", err);
        return -1;
    }
    return 0;
}
