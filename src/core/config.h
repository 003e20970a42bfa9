/* Configuration: defaults, then the config file, then TMS_SECTION_KEY environment
 * variables, then --set section.key=value, each layer overriding the last. Every
 * key is declared once in config.c's table (name, type, bounds, default, doc), so
 * config/tms.conf, the validation and the error messages cannot drift apart. */
#ifndef TMS_CORE_CONFIG_H
#define TMS_CORE_CONFIG_H

#include <stddef.h>
#include <stdint.h>

typedef struct tms_config {
    struct {
        char addr[128];
        int64_t max_head_bytes, max_body_bytes;
        int64_t head_timeout, idle_timeout; /* seconds */
        int64_t body_timeout, send_timeout; /* seconds: a whole body, a whole response */
        int64_t max_connections;
        int64_t max_connections_per_address; /* per listener and process; 0 off */
        /* TLS (io/tls): PEM files, nginx's names; a cert makes the listener TLS only */
        char tls_cert[1024], tls_key[1024], tls_client_ca[1024];
        char tls_protocols[64], tls_ciphers[512];
        int64_t tls_handshake_timeout; /* seconds, http.addr and grpc.addr */
        char cors_origins[1024];       /* comma-separated origins, "*", or "": no CORS */
        /* CIDR list: peers whose X-Forwarded-For / Forwarded name the client (core/cidr.h) */
        char trusted_proxies[1024];
    } http;
    struct {
        char addr[128];
        int64_t max_message_bytes, max_unauthenticated_message_bytes;
        int64_t max_connection_request_bytes;
        int64_t max_stream_output_bytes, max_connection_output_bytes;
        int64_t max_buffered_bytes;            /* per worker */
        int64_t receive_timeout, send_timeout; /* seconds */
        char tls_cert[1024], tls_key[1024], tls_client_ca[1024];
        char tls_protocols[64], tls_ciphers[512];
        char trusted_peers[1024]; /* CIDR list (core/cidr.h); empty: no trusted peer */
    } grpc;
    struct {
        char addr[128];  /* separate /metrics listener; empty: none */
        char token[256]; /* bearer for /metrics on http.addr; empty: not served there */
    } metrics;
    struct {
        int64_t workers;
        int64_t shutdown_grace; /* seconds */
        int64_t mailbox_capacity;
        int64_t request_timeout; /* seconds: deadline of every API call */
        char roles[64];          /* comma-separated subset of gateway,auth,task,notifier */
        unsigned role_mask;      /* TMS_ROLE_* bits of roles; set by tms_config_finish */
    } server;
    struct {
        char auth[128], task[128]; /* host:port of those roles' gRPC listeners */
        char secret[256];          /* service credential (from secret_file if empty) */
        char secret_file[1024];
        int64_t pool_size, connect_timeout_ms, timeout_ms, retry_attempts;
        int64_t breaker_cooldown_ms;
        char tls_cert[1024], tls_key[1024], tls_ca[1024]; /* mutual TLS between roles */
    } peers;
    struct {
        char dir[1024];
    } data;
    struct {
        char url[1024];
        int64_t pool_size;                   /* MongoDB only: worker threads = connections */
        int64_t server_selection_timeout_ms; /* MongoDB: unless the URL sets it */
        int64_t socket_timeout_ms;           /* MongoDB: unless the URL sets it */
    } users;
    struct {
        char url[1024];
        char migrate[8];                                         /* auto | off */
        int64_t pool_size, pipeline_depth, statement_timeout_ms; /* PostgreSQL only */
        char synchronous_commit[8];                              /* require | accept-off */
    } tasks;
    struct {
        char brokers[1024];
        char client_id[64];              /* Kafka client.id */
        char ns[32];                     /* namespace of topics and groups */
        int64_t partitions, replication; /* of topics created at start */
        int64_t dlq_after, retry_ms;     /* consumer attempts, first back-off */
        int64_t publish_timeout_ms;      /* a publish fails after this */
        int64_t inbox_retention;         /* seconds handled-event records are kept; 0: all */
        char security_protocol[16];      /* Kafka security.protocol: plaintext | ssl */
        char tls_ca[1024], tls_cert[1024], tls_key[1024]; /* ssl.*.location */
    } events;
    struct {
        char url[1024];
        char from[256];
        char starttls[8];                          /* SMTP: auto | off | try | require */
        int64_t timeout_ms, max_concurrent;        /* SMTP: per send; transfers at once */
        int64_t retry_attempts;                    /* SMTP: attempts per mail before pending */
        int64_t retry_base_ms, retry_max_ms;       /* SMTP: full-jitter back-off bounds */
        int64_t breaker_window, breaker_threshold; /* SMTP: last N sends, % failed to open */
        int64_t breaker_cooldown_ms;               /* SMTP: open -> half-open */
        char dlq_dir[1024];                        /* dead letters (default <data.dir>/mail-dlq) */
        char ca_file[1024]; /* SMTP: PEM CAs for TLS; empty: the system store */
    } mail;
    struct {
        char jwt_secret[512]; /* from jwt_secret_file if empty */
        char jwt_secret_file[1024];
        int64_t token_ttl;
        char issuer[128];
        int64_t user_cache_ms;
        int64_t hash_threads, hash_queue;
        int64_t hash_queue_ms;    /* a hash queued longer answers 503; 0 off */
        char hash_priority[8];    /* idle | nice */
        int64_t hash_per_address; /* hashes queued or running per client address; 0 off */
        int64_t argon2_opslimit, argon2_memlimit_kib;
        char registration[8];         /* open | closed | admin */
        char login_revokes_others[8]; /* true | false */
    } auth;
    struct {
        int64_t api_per_minute, login_per_15min, task_create_per_hour;
        int64_t ipv6_prefix; /* IPv6 clients are counted per prefix of this length */
    } ratelimit;
    struct {
        int64_t per_assigner_per_hour, per_recipient_per_hour; /* emails; 0: no limit */
    } notify;
    struct {
        int64_t retention;                                 /* seconds the push log keeps events */
        int64_t max_events;                                /* and at most this many */
        int64_t max_subscribers, max_subscribers_per_user; /* per process */
        int64_t queue_bytes;                               /* per subscriber, not yet taken */
        int64_t heartbeat, recheck;                        /* seconds */
        int64_t retry_ms;                                  /* SSE reconnection advice */
    } push;
    struct {
        char level[8];
    } log;
    /* Where each key's value came from (TMS_CONFIG_FROM_*), in the table's order: what
     * `tms config` prints beside a value that is not the default. */
    unsigned char source[160];
} tms_config_t;

#define TMS_CONFIG_FROM_DEFAULT 0
#define TMS_CONFIG_FROM_FILE 1
#define TMS_CONFIG_FROM_ENV 2
#define TMS_CONFIG_FROM_SET 3

/* The roles of server.roles: the four actors and what each needs. */
#define TMS_ROLE_GATEWAY 1u
#define TMS_ROLE_AUTH 2u
#define TMS_ROLE_TASK 4u
#define TMS_ROLE_NOTIFIER 8u
#define TMS_ROLE_ALL 15u

/** Fill every field with its default. */
void tms_config_defaults(tms_config_t *cfg);

/** Load path (NULL: none) over the current values. On error writes one line naming
 * the key (or file and line) into err and returns -TMS_EINVAL (or -TMS_EIO when the
 * file cannot be read). */
int tms_config_load_file(tms_config_t *cfg, const char *path, char *err, size_t err_len);

/** Apply every TMS_SECTION_KEY variable of the environment that names a key. */
int tms_config_load_env(tms_config_t *cfg, char *err, size_t err_len);

/** Apply "section.key=value". Unknown keys and bad values fail naming the key. */
int tms_config_set(tms_config_t *cfg, const char *assignment, char *err, size_t err_len);

/** Cross-key checks and derived defaults (users.url from data.dir, ...). */
int tms_config_finish(tms_config_t *cfg, char *err, size_t err_len);

/* Secrets (auth.jwt_secret, peers.secret, their files) are at least this long after
 * trimming blanks. */
#define TMS_SECRET_MIN 32

/** Check a secret for key ("auth.jwt_secret"): at least TMS_SECRET_MIN bytes without
 * the blanks around it, at least 8 different bytes, and not a value that appears in
 * the TMS repository (deploy/compose.yaml's old fallbacks, test and fuzz keys, which
 * anyone can read). Returns 0, or -TMS_EINVAL with one line naming the key (never the
 * secret) in err. */
int tms_config_check_secret(const char *key, const char *secret, char *err, size_t err_len);

/** Read a secret from the file at path into out (size bytes); key names the setting
 * in errors ("auth.jwt_secret_file"). Refused when group or others have any access to
 * the file (the line names the file and its mode);
 * the secret is the file's first line without the blanks around it, checked with
 * tms_config_check_secret. Returns 0, or -TMS_EINVAL with one line in err. */
int tms_config_read_secret_file(const char *key, const char *path, char *out, size_t size,
                                char *err, size_t err_len);

/** Write the documented default config file text (config/tms.conf) to a FILE*. */
void tms_config_write_defaults(void *file);

/** Write cfg as a config file (the layout of tms_config_write_defaults) to a FILE*: each
 * key's value after file, environment and --set (and tms_config_finish's derived values),
 * with a comment naming where a value that is not the default came from. Secrets
 * (auth.jwt_secret, peers.secret, metrics.token) print as ******** when set, and the
 * password of a URL (user:password@, password=) as well. */
void tms_config_write(const tms_config_t *cfg, void *file);

/** Call warn(arg, line) once per variable of the environment that starts with TMS_ and
 * names no key (TMS_FAULT_*, the fault hooks of test builds, excepted): one line naming
 * the variable and the closest key's variable, e.g. "TMS_HTTP_ADR is not a setting; did
 * you mean TMS_HTTP_ADDR (http.addr)? ignored". */
void tms_config_check_env(void (*warn)(void *arg, const char *line), void *arg);

/** Parse a listen address and write its numeric form "host:port" or "[v6]:port" into
 * out: ":3000" and "3000" listen on every IPv4 address (0.0.0.0:3000), "localhost:3000"
 * on 127.0.0.1, "[::1]:3000" on an IPv6 address; other host names are refused (a
 * listener binds addresses, not names). Returns 0, or -TMS_EINVAL with one line naming
 * key in err. */
int tms_config_parse_listen(const char *key, const char *addr, char *out, size_t out_len, char *err,
                            size_t err_len);

#endif
