#include "core/config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "core/cidr.h"
#include "core/status.h"

typedef enum { T_STR, T_INT, T_ENUM } type_t;

typedef struct key {
    const char *section, *name;
    type_t type;
    size_t offset, size; /* T_STR/T_ENUM: buffer size */
    int64_t min, max;    /* T_INT bounds */
    const char *choices; /* T_ENUM: "a|b" */
    const char *def;
    const char *doc;
} key_t_;

#define STR(sec, key, field, def, doc)                                                             \
    {                                                                                              \
#sec, #key, T_STR, offsetof(tms_config_t, field), sizeof(((tms_config_t *)0)->field), 0,   \
            0, NULL, def, doc                                                                      \
    }
#define INT(sec, key, field, min, max, def, doc)                                                   \
    {                                                                                              \
#sec, #key, T_INT, offsetof(tms_config_t, field), 0, min, max, NULL, def, doc              \
    }
#define ENUM(sec, key, field, choices, def, doc)                                                   \
    {                                                                                              \
#sec, #key, T_ENUM, offsetof(tms_config_t, field), sizeof(((tms_config_t *)0)->field), 0,  \
            0, choices, def, doc                                                                   \
    }

/* io/tls's TMS_TLS_CIPHERS (core cannot include io/): Mozilla intermediate, ECDHE. */
#define TLS_CIPHERS                                                                                \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"     \
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

static const key_t_ keys[] = {
    STR(http, addr, http.addr, "0.0.0.0:3000", "REST listener, host:port"),
    INT(http, max_head_bytes, http.max_head_bytes, 1024, 1 << 20, "16384",
        "request line + headers limit in bytes (431 beyond)"),
    INT(http, max_body_bytes, http.max_body_bytes, 0, 64 << 20, "1048576",
        "request body limit in bytes (413 beyond)"),
    INT(http, head_timeout, http.head_timeout, 1, 3600, "10",
        "seconds for a request head to arrive"),
    INT(http, idle_timeout, http.idle_timeout, 1, 86400, "60",
        "seconds an idle keep-alive connection is kept, and the longest pause within a request "
        "body"),
    INT(http, body_timeout, http.body_timeout, 1, 3600, "30",
        "seconds for a whole request body to arrive after its head, however steadily it "
        "trickles (408 and close beyond)"),
    INT(http, send_timeout, http.send_timeout, 1, 3600, "30",
        "seconds a response may take to be written out; a client that does not read it is "
        "closed"),
    INT(http, max_connections, http.max_connections, 1, 1000000, "10000",
        "open connections per worker; more are closed at accept"),
    INT(http, max_connections_per_address, http.max_connections_per_address, 0, 1000000, "64",
        "open connections per client address (IPv6: per ratelimit.ipv6_prefix) on http.addr, "
        "and as many again on grpc.addr, for the whole process, and at most half of "
        "http.max_connections; more are closed at accept (tms_connections_refused_total). 0 "
        "off: set it behind a reverse proxy, whose address every client would share"),
    STR(http, tls_cert, http.tls_cert, "",
        "PEM certificate chain (leaf first) for http.addr; set, the listener speaks TLS only "
        "(ALPN http/1.1); an unreadable or expired certificate stops start-up; re-read on "
        "SIGHUP for new connections; empty: cleartext"),
    STR(http, tls_key, http.tls_key, "",
        "PEM private key of http.tls_cert, without a passphrase; refused when others may read "
        "it (chmod 600, or 640 with a group of its own) or when it does not match the "
        "certificate"),
    STR(http, tls_client_ca, http.tls_client_ca, "",
        "PEM CA certificates: clients on http.addr must present a certificate from one of "
        "them (mutual TLS); empty: none asked"),
    STR(http, tls_protocols, http.tls_protocols, "TLSv1.2 TLSv1.3",
        "TLS versions on http.addr: TLSv1.2 and/or TLSv1.3 (older ones are not available)"),
    STR(http, tls_ciphers, http.tls_ciphers, TLS_CIPHERS,
        "TLS 1.2 cipher suites on http.addr (OpenSSL list; TLS 1.3 suites are OpenSSL's); "
        "default: Mozilla intermediate without DHE"),
    INT(http, tls_handshake_timeout, http.tls_handshake_timeout, 1, 3600, "10",
        "seconds a TLS handshake may take on http.addr and grpc.addr; then the connection is "
        "closed (tms_tls_handshake_failures_total{reason=\"timeout\"})"),
    STR(http, cors_origins, http.cors_origins, "",
        "origins (scheme://host[:port], comma-separated) whose browser pages may call the REST "
        "API and open task event streams (CORS, with preflight); * allows any; empty: none"),
    STR(http, trusted_proxies, http.trusted_proxies, "",
        "reverse proxies (addresses or CIDR ranges, IPv4/IPv6, comma or blank separated, at "
        "most 64): on a request from one of them the client address is taken from "
        "X-Forwarded-For (or Forwarded: for=), the rightmost hop that is not itself a trusted "
        "proxy, for the rate limits, auth.hash_per_address and the logs; from any other peer "
        "those headers are ignored. Connection caps still count the proxy's address. Empty: "
        "the peer's address is the client's"),
    STR(grpc, addr, grpc.addr, "0.0.0.0:50051", "gRPC listener, host:port"),
    INT(grpc, max_message_bytes, grpc.max_message_bytes, 1024, 64 << 20, "4194304",
        "request message limit in bytes (RESOURCE_EXHAUSTED beyond)"),
    INT(grpc, max_unauthenticated_message_bytes, grpc.max_unauthenticated_message_bytes, 256,
        1 << 20, "8192",
        "request message limit in bytes on a call whose token is not checked before it runs: "
        "methods that need none (Register, Login, VerifyToken, health, reflection) and token "
        "methods called without an authorization header; a larger message is answered from its "
        "prefix, before it is read (UNAUTHENTICATED on a token method, else RESOURCE_EXHAUSTED)"),
    INT(grpc, max_connection_request_bytes, grpc.max_connection_request_bytes, 1024, 1 << 30,
        "8388608",
        "request bytes one connection may hold over all its streams (messages arriving or "
        "waiting for their stream's end, copied credentials); at least max_message_bytes; the "
        "call that would pass it gets RESOURCE_EXHAUSTED"),
    INT(grpc, max_stream_output_bytes, grpc.max_stream_output_bytes, 1024, 1 << 30, "4194304",
        "reply bytes queued on one stream and not yet taken by the client; beyond it the call "
        "ends with RESOURCE_EXHAUSTED (RST_STREAM ENHANCE_YOUR_CALM once a reply was sent)"),
    INT(grpc, max_connection_output_bytes, grpc.max_connection_output_bytes, 1024, 1 << 30,
        "8388608",
        "reply bytes queued on one connection, unfinished socket writes included; beyond it as "
        "max_stream_output_bytes"),
    INT(grpc, max_buffered_bytes, grpc.max_buffered_bytes, 1 << 20, (int64_t)1 << 40, "134217728",
        "all request and reply bytes held by the gRPC connections of one worker, each open "
        "stream counted as 1 KiB; beyond it a new stream is refused (RST_STREAM REFUSED_STREAM) "
        "and a call that needs more gets RESOURCE_EXHAUSTED"),
    INT(grpc, receive_timeout, grpc.receive_timeout, 1, 3600, "10",
        "seconds from a stream's headers to the end of its request (on a reflection stream: to "
        "each next message); DEADLINE_EXCEEDED beyond"),
    INT(grpc, send_timeout, grpc.send_timeout, 1, 3600, "10",
        "seconds a queued reply, or a connection's socket write, may wait with none of it taken "
        "by the client; then the stream is reset (CANCEL) or the connection closed"),
    STR(grpc, tls_cert, grpc.tls_cert, "",
        "PEM certificate chain for grpc.addr; set, the listener speaks TLS only (ALPN h2; a "
        "client offering ALPN without h2 is refused with no_application_protocol); re-read on "
        "SIGHUP; empty: cleartext h2c. Not on a process without gateway (its listener serves "
        "the internal service: peers.tls_cert)"),
    STR(grpc, tls_key, grpc.tls_key, "", "PEM private key of grpc.tls_cert (as http.tls_key)"),
    STR(grpc, tls_client_ca, grpc.tls_client_ca, "",
        "PEM CA certificates: clients on grpc.addr must present a certificate from one of "
        "them; empty: none asked"),
    STR(grpc, tls_protocols, grpc.tls_protocols, "TLSv1.2 TLSv1.3",
        "TLS versions on grpc.addr: TLSv1.2 and/or TLSv1.3"),
    STR(grpc, tls_ciphers, grpc.tls_ciphers, TLS_CIPHERS,
        "TLS 1.2 cipher suites on grpc.addr (OpenSSL list)"),
    STR(grpc, trusted_peers, grpc.trusted_peers, "",
        "migration from the original Node.js system: addresses or CIDR ranges (IPv4/IPv6, "
        "comma or blank separated, at most 64) whose gRPC calls without a token are served with "
        "the original's semantics: task calls act with no caller and no permission check, "
        "Logout, DeleteUser and GetUserInfo act on the userId in the message; a process without "
        "the gateway role then also serves its roles' original services (auth: AuthService, "
        "task: TaskService). A call with a token follows TMS's rules. Each such call is logged "
        "(trusted_peer=) and counted; empty: off"),
    STR(metrics, addr, metrics.addr, "127.0.0.1:9090",
        "listener that serves only GET /metrics, without a token, host:port; keep it on "
        "loopback or a private network (each process on a host needs its own port); empty: "
        "none"),
    STR(metrics, token, metrics.token, "",
        "bearer token (32+ bytes) that GET /metrics on http.addr requires; empty: http.addr "
        "does not serve /metrics (404)"),
    INT(server, workers, server.workers, 1, 64, "1",
        "event loops, one thread each, all accepting on http.addr and grpc.addr "
        "(SO_REUSEPORT); worker 0 also runs the outbox relays, the notifier and the Kafka "
        "consumers. The rate limits, the user cache, the hash threads and the SQLite and "
        "MongoDB stores are shared by all workers; PostgreSQL has tasks.pool_size "
        "connections per worker. Must be 1 unless server.roles has all four roles"),
    INT(server, shutdown_grace, server.shutdown_grace, 0, 600, "10",
        "seconds in-flight requests get to finish on SIGTERM/SIGINT"),
    INT(server, mailbox_capacity, server.mailbox_capacity, 1, 1000000, "1024",
        "queued requests per actor before it answers UNAVAILABLE"),
    INT(server, request_timeout, server.request_timeout, 1, 600, "30",
        "seconds an API call may take before DEADLINE_EXCEEDED"),
    STR(server, roles, server.roles, "gateway,auth,task,notifier",
        "actors this process runs, any subset of gateway,auth,task,notifier (`tms serve "
        "--roles`); the others are reached at peers.auth / peers.task"),
    STR(peers, auth, peers.auth, "",
        "host:port of the auth role's gRPC listener (its grpc.addr); needed when auth is not "
        "in server.roles but gateway, task or notifier is"),
    STR(peers, task, peers.task, "",
        "host:port of the task role's gRPC listener; needed when gateway runs without task"),
    STR(peers, secret, peers.secret, "",
        "service credential every role of a split deployment shares (at least 32 bytes, not "
        "an example value); required unless server.roles has all four roles"),
    STR(peers, secret_file, peers.secret_file, "",
        "file holding peers.secret (its first line, blanks trimmed), used when peers.secret "
        "is empty; refused when group or others may access it"),
    INT(peers, pool_size, peers.pool_size, 1, 64, "2", "HTTP/2 connections per peer"),
    INT(peers, connect_timeout_ms, peers.connect_timeout_ms, 50, 60000, "2000",
        "ms a connection to a peer may take"),
    INT(peers, timeout_ms, peers.timeout_ms, 50, 600000, "5000",
        "deadline of a call to a peer that carries none of its own (event handling)"),
    INT(peers, retry_attempts, peers.retry_attempts, 1, 10, "3",
        "attempts per call to a peer, first included; calls that change state are retried "
        "only when the request never left"),
    INT(peers, breaker_cooldown_ms, peers.breaker_cooldown_ms, 100, 600000, "2000",
        "ms a peer's circuit breaker stays open (calls answer 503 at once) before a probe"),
    STR(peers, tls_cert, peers.tls_cert, "",
        "mutual TLS between the roles of a split deployment: this process's PEM certificate "
        "chain, presented to the peers it calls and served on grpc.addr by a process without "
        "gateway (whose listener then requires a client certificate from peers.tls_ca); the "
        "service credential (peers.secret) is still required on every call; re-read on "
        "SIGHUP; empty: cleartext between roles"),
    STR(peers, tls_key, peers.tls_key, "", "PEM private key of peers.tls_cert"),
    STR(peers, tls_ca, peers.tls_ca, "",
        "PEM CA certificates that sign every role's peers.tls_cert: the server's certificate "
        "must come from one and carry the host of peers.auth / peers.task (name or IP), and so "
        "must a caller's"),
    STR(data, dir, data.dir, "./data", "embedded stores, generated secret, Maildir"),
    STR(users, url, users.url, "",
        "user store: sqlite:///path or mongodb://host:port/db (default "
        "sqlite://<data.dir>/tms.db)"),
    INT(users, pool_size, users.pool_size, 1, 64, "4",
        "MongoDB: worker threads, one pooled connection each (operations in flight); one pool "
        "for all server.workers"),
    INT(users, server_selection_timeout_ms, users.server_selection_timeout_ms, 100, 600000, "2000",
        "MongoDB: how long an operation waits for a reachable server before failing with 503, "
        "unless the URL sets serverSelectionTimeoutMS"),
    INT(users, socket_timeout_ms, users.socket_timeout_ms, 100, 600000, "5000",
        "MongoDB: how long an operation waits for a reply before failing with 503, unless the "
        "URL sets socketTimeoutMS"),
    STR(tasks, url, tasks.url, "",
        "task store: sqlite:///path or postgres://user@host/db (default "
        "sqlite://<data.dir>/tms.db)"),
    ENUM(tasks, migrate, tasks.migrate, "auto|off", "auto",
         "auto applies migrations at start; off leaves it to `tms migrate`"),
    INT(tasks, pool_size, tasks.pool_size, 1, 64, "4", "PostgreSQL: connections per worker"),
    INT(tasks, pipeline_depth, tasks.pipeline_depth, 1, 1024, "32",
        "PostgreSQL: operations in flight per connection (pipeline mode), which also bounds "
        "a group of writes committed together; 1 turns pipelining and groups off"),
    INT(tasks, statement_timeout_ms, tasks.statement_timeout_ms, 100, 600000, "5000",
        "PostgreSQL: server-side statement_timeout in ms; a slower statement fails with 503"),
    ENUM(tasks, synchronous_commit, tasks.synchronous_commit, "require|accept-off", "require",
         "PostgreSQL: require refuses to start on a server with synchronous_commit=off "
         "(acknowledged writes could be lost); accept-off starts anyway"),
    STR(events, brokers, events.brokers, "", "Kafka bootstrap servers; empty: in-process bus"),
    STR(events, client_id, events.client_id, "tms", "Kafka client.id (tells instances apart)"),
    STR(events, namespace, events.ns, "",
        "Kafka: topics become <namespace>.<topic> and consumer groups <group>.<namespace>, so "
        "deployments sharing one cluster keep their events apart; empty: none"),
    INT(events, partitions, events.partitions, 1, 1000, "3",
        "Kafka: partitions of the topics TMS creates at start when missing"),
    INT(events, replication, events.replication, 1, 32, "1",
        "Kafka: replication factor of the topics TMS creates"),
    INT(events, dlq_after, events.dlq_after, 1, 1000, "5",
        "attempts at an event that fails permanently (malformed, recipient refused for good, "
        "user gone) before it is dead-lettered (Kafka: <topic>.dlq; in process: logged); a "
        "dependency that is down pauses the consumer instead and counts no attempt"),
    INT(events, retry_ms, events.retry_ms, 10, 60000, "200",
        "back-off before the next attempt at a failed event, doubled per attempt; also the first "
        "probe after a consumer paused for a dependency (doubled up to 5 s, at least a "
        "breaker's cool-down)"),
    INT(events, publish_timeout_ms, events.publish_timeout_ms, 1000, 600000, "10000",
        "Kafka: a publish not acknowledged by then fails (the outbox retries it)"),
    INT(events, inbox_retention, events.inbox_retention, 0, 3153600000, "1209600",
        "seconds the consumers' records of handled events (the inbox, which drops "
        "redeliveries) are kept; older ones are deleted every hour (and 5 s after start). A "
        "redelivery after that is handled again (a mail, a saga step), so keep it above how "
        "long the bus may redeliver an event (Kafka: log.retention plus segment.ms, 14 days "
        "by default, and any offset reset); 0 keeps them all"),
    ENUM(events, security_protocol, events.security_protocol, "plaintext|ssl", "plaintext",
         "Kafka security.protocol: ssl speaks TLS to the brokers and checks their certificates "
         "and host names"),
    STR(events, tls_ca, events.tls_ca, "",
        "Kafka ssl.ca.location: PEM CAs of the brokers' certificates; empty: the system store"),
    STR(events, tls_cert, events.tls_cert, "",
        "Kafka ssl.certificate.location: PEM client certificate for brokers that ask for one"),
    STR(events, tls_key, events.tls_key, "", "Kafka ssl.key.location: its PEM private key"),
    STR(mail, url, mail.url, "",
        "mailer: maildir:///path (default maildir://<data.dir>/mail), or "
        "smtp://[user:password@]host:port / smtps://... (implicit TLS)"),
    STR(mail, from, mail.from, "no-reply@tms.local",
        "sender address of assignment emails; its domain names the Message-IDs"),
    ENUM(mail, starttls, mail.starttls, "auto|off|try|require", "auto",
         "SMTP: STARTTLS on smtp:// URLs; require fails a send without it, try sends in clear "
         "text when the server offers none, auto is require when mail.url carries credentials "
         "and try otherwise"),
    STR(mail, ca_file, mail.ca_file, "",
        "SMTP: PEM file of CAs that verify the server's certificate; empty: the system store"),
    INT(mail, timeout_ms, mail.timeout_ms, 100, 600000, "5000",
        "SMTP: one send (connect to final reply) fails after this many ms"),
    INT(mail, max_concurrent, mail.max_concurrent, 1, 256, "4",
        "SMTP: sends in flight at once (and connections kept for reuse)"),
    INT(mail, retry_attempts, mail.retry_attempts, 1, 100, "4",
        "SMTP: attempts at a mail after transient failures (4xx, connect, timeout); then the "
        "event stays pending and is redelivered"),
    INT(mail, retry_base_ms, mail.retry_base_ms, 1, 600000, "500",
        "SMTP: back-off cap before the 2nd attempt, doubled per attempt (full jitter)"),
    INT(mail, retry_max_ms, mail.retry_max_ms, 1, 3600000, "10000", "SMTP: largest back-off cap"),
    INT(mail, breaker_window, mail.breaker_window, 1, 64, "10",
        "SMTP circuit breaker: judged over the last N sends"),
    INT(mail, breaker_threshold, mail.breaker_threshold, 1, 100, "50",
        "SMTP circuit breaker: opens when this % of the last N sends failed"),
    INT(mail, breaker_cooldown_ms, mail.breaker_cooldown_ms, 100, 3600000, "10000",
        "SMTP circuit breaker: ms open before one probe send (half-open)"),
    STR(mail, dlq_dir, mail.dlq_dir, "",
        "SMTP: dead letters (permanent 5xx), one file per event (default "
        "<data.dir>/mail-dlq); `tms mail dlq list|replay`"),
    STR(auth, jwt_secret, auth.jwt_secret, "",
        "HS256 key, at least 32 bytes, not an example value; empty: auth.jwt_secret_file, or "
        "generated once into <data.dir>/jwt.secret (mode 0600)"),
    STR(auth, jwt_secret_file, auth.jwt_secret_file, "",
        "file holding auth.jwt_secret (its first line, blanks trimmed), used when "
        "auth.jwt_secret is empty; refused when group or others may access it"),
    INT(auth, token_ttl, auth.token_ttl, 1, 31536000, "3600", "token lifetime in seconds"),
    STR(auth, issuer, auth.issuer, "tms", "JWT iss claim, checked on every token"),
    INT(auth, user_cache_ms, auth.user_cache_ms, 0, 60000, "1000",
        "ms a verified user is trusted without asking the store; this process's own "
        "logins, logouts and deletes apply at once in every worker, other writers (another "
        "instance, `tms user set-role`) within this time; 0 off"),
    INT(auth, hash_threads, auth.hash_threads, 1, 64, "2",
        "password hashing threads, shared by all server.workers; at most the CPUs the "
        "process may run on less one (at least 1), at auth.hash_priority, so that hashes "
        "never take every core from the loops"),
    ENUM(auth, hash_priority, auth.hash_priority, "nice|idle", "nice",
         "nice: the hash threads run at nice 10 and a thread wakes every 0.5 ms while one "
         "hashes, so hashes always get about a tenth of a busy CPU and a loop waits about "
         "2 ms at most behind one. idle: at SCHED_IDLE (nice 10 where not available), a "
         "loop waits at most about 0.7 ms; but on a CPU that other processes never leave "
         "idle, hashes do not advance and logins time out"),
    INT(auth, hash_queue, auth.hash_queue, 1, 100000, "256",
        "queued password hashes before logins answer UNAVAILABLE"),
    INT(auth, hash_queue_ms, auth.hash_queue_ms, 0, 60000, "2000",
        "ms a password hash may wait in the queue; a register or login whose hash waited "
        "longer answers 503 without hashing; 0 off"),
    INT(auth, hash_per_address, auth.hash_per_address, 0, 100000, "4",
        "password hashes (register, login) queued or running per client address (IPv6: per "
        "ratelimit.ipv6_prefix), for the whole process; more answer 429 at once, so a few "
        "addresses cannot fill the hash queue; 0 off"),
    INT(auth, argon2_opslimit, auth.argon2_opslimit, 1, 64, "2", "argon2id passes"),
    INT(auth, argon2_memlimit_kib, auth.argon2_memlimit_kib, 8, 4194304, "65536",
        "argon2id memory in KiB"),
    ENUM(auth, registration, auth.registration, "open|closed|admin", "open",
         "who creates accounts: open, anyone (POST /api/auth/register, AuthService/Register), as "
         "the original; admin, only admins (POST /api/auth/users) and `tms user create`; closed, "
         "only `tms user create`. Register answers 403 unless open"),
    ENUM(auth, login_revokes_others, auth.login_revokes_others, "true|false", "true",
         "true: each login ends the user's earlier tokens, as the original (one session per "
         "user); false: logins coexist (several devices) until they expire or a logout ends "
         "them all"),
    INT(ratelimit, api_per_minute, ratelimit.api_per_minute, 0, 100000000, "100",
        "API requests per minute per client address; 0 disables"),
    INT(ratelimit, login_per_15min, ratelimit.login_per_15min, 0, 100000000, "5",
        "logins per 15 minutes per email and address; 0 disables"),
    INT(ratelimit, task_create_per_hour, ratelimit.task_create_per_hour, 0, 100000000, "10",
        "task creations per hour per user; 0 disables"),
    INT(ratelimit, ipv6_prefix, ratelimit.ipv6_prefix, 1, 128, "64",
        "IPv6 clients count as one address per prefix of this many bits (one subscriber "
        "usually holds a /64) in every per-address limit; IPv4 addresses count alone"),
    INT(notify, per_assigner_per_hour, notify.per_assigner_per_hour, 0, 100000000, "5",
        "assignment emails per hour from one user (who created or reassigned the task) to "
        "one recipient; more are suppressed (logged, counted, not sent); per notifier process; "
        "0 disables"),
    INT(notify, per_recipient_per_hour, notify.per_recipient_per_hour, 0, 100000000, "20",
        "assignment emails per hour to one recipient from everyone; more are suppressed; per "
        "notifier process; 0 disables"),
    INT(push, retention, push.retention, 60, 31536000, "86400",
        "seconds the push log keeps task events for streams that resume (Last-Event-ID, "
        "?since=); older ones are purged, and a resume from before them starts with a reset "
        "event"),
    INT(push, max_events, push.max_events, 1, 1000000000, "1000000",
        "task events the push log keeps at most, whatever their age"),
    INT(push, max_subscribers, push.max_subscribers, 1, 1000000, "10000",
        "open task event streams (SSE and gRPC) per process; more are refused (429 / "
        "RESOURCE_EXHAUSTED)"),
    INT(push, max_subscribers_per_user, push.max_subscribers_per_user, 1, 1000000, "16",
        "open task event streams of one user per process; more are refused"),
    INT(push, queue_bytes, push.queue_bytes, 4096, 64 << 20, "262144",
        "bytes of events one stream may have queued and not yet taken by its client; past it "
        "the stream ends (slow consumer: SSE event error, gRPC RESOURCE_EXHAUSTED)"),
    INT(push, heartbeat, push.heartbeat, 1, 3600, "15",
        "seconds between SSE comment heartbeats on a quiet stream"),
    INT(push, recheck, push.recheck, 1, 3600, "30",
        "seconds between checks that each stream's token is still valid (a logout or delete "
        "on this process ends its streams at once; elsewhere within this time)"),
    INT(push, retry_ms, push.retry_ms, 100, 600000, "3000",
        "reconnection delay advised to SSE clients (retry:)"),
    ENUM(log, level, log.level, "debug|info|warn|error", "info", "minimum level logged"),
};
#define NKEYS (sizeof(keys) / sizeof(keys[0]))
_Static_assert(NKEYS <= sizeof(((tms_config_t *)0)->source), "tms_config_t.source is too small");

static const key_t_ *find_key(const char *section, const char *name)
{
    for (size_t i = 0; i < NKEYS; i++) {
        if (strcmp(keys[i].section, section) == 0 && strcmp(keys[i].name, name) == 0)
            return &keys[i];
    }
    return NULL;
}

static int enum_ok(const key_t_ *k, const char *v)
{
    const char *p = k->choices;
    size_t n = strlen(v);
    while (p && *p) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && strncmp(p, v, n) == 0)
            return 1;
        p = bar ? bar + 1 : NULL;
    }
    return 0;
}

/* Sets one key from text; the error names the key as section.key. */
static int set_value(tms_config_t *cfg, const key_t_ *k, const char *value, char *err,
                     size_t err_len)
{
    char *base = (char *)cfg + k->offset;
    if (k->type == T_INT) {
        char *end;
        long long v;
        errno = 0;
        v = strtoll(value, &end, 10);
        while (end && isspace((unsigned char)*end))
            end++;
        if (errno || end == value || *end != '\0') {
            snprintf(err, err_len, "config: %s.%s: \"%.64s\" is not an integer", k->section,
                     k->name, value);
            return -TMS_EINVAL;
        }
        if (v < k->min || v > k->max) {
            snprintf(err, err_len, "config: %s.%s: %lld is out of range %lld..%lld", k->section,
                     k->name, v, (long long)k->min, (long long)k->max);
            return -TMS_EINVAL;
        }
        *(int64_t *)base = v;
        return 0;
    }
    if (strlen(value) >= k->size) {
        snprintf(err, err_len, "config: %s.%s: value longer than %zu bytes", k->section, k->name,
                 k->size - 1);
        return -TMS_EINVAL;
    }
    if (k->type == T_ENUM && !enum_ok(k, value)) {
        snprintf(err, err_len, "config: %s.%s: \"%.64s\" is not one of %s", k->section, k->name,
                 value, k->choices);
        return -TMS_EINVAL;
    }
    memcpy(base, value, strlen(value) + 1);
    return 0;
}

void tms_config_defaults(tms_config_t *cfg)
{
    char err[256];
    memset(cfg, 0, sizeof(*cfg));
    for (size_t i = 0; i < NKEYS; i++)
        (void)set_value(cfg, &keys[i], keys[i].def, err, sizeof(err));
}

typedef struct {
    tms_config_t *cfg;
    char *err;
    size_t err_len;
    int rc;
    const char *path;
} ini_ctx_t;

static int on_ini(void *user, const char *section, const char *name, const char *value)
{
    ini_ctx_t *c = user;
    const key_t_ *k;
    if (c->rc)
        return 0;
    k = find_key(section, name);
    if (!k) {
        snprintf(c->err, c->err_len, "config: %s: unknown key %s.%s", c->path, section, name);
        c->rc = -TMS_EINVAL;
        return 0;
    }
    c->rc = set_value(c->cfg, k, value, c->err, c->err_len);
    if (c->rc == 0)
        c->cfg->source[k - keys] = TMS_CONFIG_FROM_FILE;
    return c->rc == 0;
}

int tms_config_load_file(tms_config_t *cfg, const char *path, char *err, size_t err_len)
{
    ini_ctx_t c = {cfg, err, err_len, 0, path};
    int r;
    if (!path)
        return 0;
    r = ini_parse(path, on_ini, &c);
    if (c.rc)
        return c.rc;
    if (r < 0) {
        snprintf(err, err_len, "config: cannot read %s", path);
        return -TMS_EIO;
    }
    if (r > 0) {
        snprintf(err, err_len, "config: %s:%d: syntax error", path, r);
        return -TMS_EINVAL;
    }
    return 0;
}

int tms_config_load_env(tms_config_t *cfg, char *err, size_t err_len)
{
    for (size_t i = 0; i < NKEYS; i++) {
        char var[128];
        const char *v;
        size_t n = (size_t)snprintf(var, sizeof(var), "TMS_%s_%s", keys[i].section, keys[i].name);
        for (size_t j = 0; j < n; j++)
            var[j] = (char)toupper((unsigned char)var[j]);
        v = getenv(var);
        if (v) {
            int rc = set_value(cfg, &keys[i], v, err, err_len);
            if (rc) {
                size_t used = strlen(err);
                snprintf(err + used, err_len - used, " (from %s)", var);
                return rc;
            }
            cfg->source[i] = TMS_CONFIG_FROM_ENV;
        }
    }
    return 0;
}

int tms_config_set(tms_config_t *cfg, const char *assignment, char *err, size_t err_len)
{
    const char *eq = strchr(assignment, '=');
    const char *dot = strchr(assignment, '.');
    char section[64], name[64];
    const key_t_ *k;
    if (!eq || !dot || dot > eq || (size_t)(dot - assignment) >= sizeof(section) ||
        (size_t)(eq - dot - 1) >= sizeof(name)) {
        snprintf(err, err_len, "config: --set \"%.64s\": expected section.key=value", assignment);
        return -TMS_EINVAL;
    }
    memcpy(section, assignment, (size_t)(dot - assignment));
    section[dot - assignment] = '\0';
    memcpy(name, dot + 1, (size_t)(eq - dot - 1));
    name[eq - dot - 1] = '\0';
    k = find_key(section, name);
    if (!k) {
        snprintf(err, err_len, "config: unknown key %.64s.%.64s", section, name);
        return -TMS_EINVAL;
    }
    if (set_value(cfg, k, eq + 1, err, err_len) != 0)
        return -TMS_EINVAL;
    cfg->source[k - keys] = TMS_CONFIG_FROM_SET;
    return 0;
}

static int check_url(const char *key, const char *url, const char *const *schemes, char *err,
                     size_t err_len)
{
    for (; *schemes; schemes++) {
        if (strncmp(url, *schemes, strlen(*schemes)) == 0)
            return 0;
    }
    snprintf(err, err_len, "config: %s: \"%.128s\" is not supported by this build", key, url);
    return -TMS_EINVAL;
}

static int check_addr(const char *key, const char *addr, char *err, size_t err_len)
{
    const char *colon = strrchr(addr, ':');
    char *end;
    long port;
    if (!colon || colon == addr)
        goto bad;
    port = strtol(colon + 1, &end, 10);
    if (*end != '\0' || end == colon + 1 || port < 0 || port > 65535)
        goto bad;
    return 0;
bad:
    snprintf(err, err_len, "config: %s: \"%.128s\" is not host:port", key, addr);
    return -TMS_EINVAL;
}

int tms_config_parse_listen(const char *key, const char *addr, char *out, size_t out_len, char *err,
                            size_t err_len)
{
    char host[128];
    const char *port_s;
    unsigned char bin[16];
    char *end;
    long port;
    bool v6 = false;
    if (addr[0] == '[') {
        const char *rb = strchr(addr, ']');
        if (!rb || rb[1] != ':' || (size_t)(rb - addr - 1) >= sizeof(host))
            goto bad;
        memcpy(host, addr + 1, (size_t)(rb - addr - 1));
        host[rb - addr - 1] = '\0';
        port_s = rb + 2;
        if (inet_pton(AF_INET6, host, bin) != 1)
            goto bad;
        v6 = true;
    } else {
        const char *colon = strrchr(addr, ':');
        size_t hlen = colon ? (size_t)(colon - addr) : 0;
        if (colon && memchr(addr, ':', hlen)) {
            snprintf(err, err_len,
                     "config: %s: \"%.128s\": write an IPv6 address in brackets, e.g. [::1]:3000",
                     key, addr);
            return -TMS_EINVAL;
        }
        if (hlen >= sizeof(host))
            goto bad;
        memcpy(host, addr, hlen);
        host[hlen] = '\0';
        port_s = colon ? colon + 1 : addr; /* "3000": a port alone */
        if (!host[0])
            snprintf(host, sizeof(host), "0.0.0.0");
        else if (strcasecmp(host, "localhost") == 0)
            snprintf(host, sizeof(host), "127.0.0.1");
        else if (inet_pton(AF_INET, host, bin) != 1)
            goto bad;
    }
    errno = 0;
    port = strtol(port_s, &end, 10);
    if (errno || end == port_s || *end || !isdigit((unsigned char)port_s[0]) || port < 0 ||
        port > 65535)
        goto bad;
    if ((size_t)snprintf(out, out_len, v6 ? "[%s]:%ld" : "%s:%ld", host, port) >= out_len)
        goto bad;
    return 0;
bad:
    snprintf(err, err_len,
             "config: %s: \"%.128s\" is not a listen address (port, :port, host:port with a "
             "numeric IPv4 address or localhost, or [IPv6]:port)",
             key, addr);
    return -TMS_EINVAL;
}

/* A listen address of cfg, rewritten to its numeric form in place. */
static int finish_listen(const char *key, char *addr, size_t size, char *err, size_t err_len)
{
    char out[160];
    if (tms_config_parse_listen(key, addr, out, sizeof(out), err, err_len) != 0)
        return -TMS_EINVAL;
    if (strlen(out) >= size) {
        snprintf(err, err_len, "config: %s: value longer than %zu bytes", key, size - 1);
        return -TMS_EINVAL;
    }
    memcpy(addr, out, strlen(out) + 1);
    return 0;
}

static int parse_roles(const char *text, unsigned *mask)
{
    static const char *const names[] = {"gateway", "auth", "task", "notifier"};
    const char *p = text;
    *mask = 0;
    while (*p) {
        size_t n = strcspn(p, ",");
        unsigned bit = 0;
        while (n && isspace((unsigned char)*p))
            p++, n--;
        for (size_t i = 0; i < 4; i++) {
            size_t len = strlen(names[i]);
            if (n >= len && strncmp(p, names[i], len) == 0 && strspn(p + len, " \t") == n - len)
                bit = 1u << i;
        }
        if (!bit)
            return -1;
        *mask |= bit;
        p += n;
        if (*p == ',')
            p++;
    }
    return *mask ? 0 : -1;
}

/* Values published with TMS, in the repository now or in its history: the old
 * fallbacks of deploy/compose.yaml, the keys of the tests, the fuzzers and the fuzz
 * corpus. Anyone can read them, so a server keyed with one has no key at all.
 * tests/integration/test_secrets.py greps the repository for secret-like literals and
 * checks that the server refuses each of them. */
static const char *const published_secrets[] = {
    "change-me-jwt-secret-0123456789abcdef0123",
    "change-me-service-credential-0123456789",
    "integration-test-secret-0123456789abcdefghijklmn",
    "another-secret-key-that-is-not-the-server-one-0123456789",
    "another-secret-another-secret-another!!",
    "0123456789abcdef0123456789abcdef",
    "0123456789abcdef0123456789abcdef-test-key",
    "0123456789abcdef0123456789abcdef-fuzz-key",
};

static bool blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

/* Case-insensitive: does s[0..n) contain the NUL-terminated word? */
static bool contains_word(const char *s, size_t n, const char *word)
{
    size_t w = strlen(word);
    for (size_t i = 0; i + w <= n; i++) {
        size_t j = 0;
        while (j < w && tolower((unsigned char)s[i + j]) == word[j])
            j++;
        if (j == w)
            return true;
    }
    return false;
}

int tms_config_check_secret(const char *key, const char *secret, char *err, size_t err_len)
{
    const char *p = secret;
    size_t n = strlen(secret), distinct = 0;
    bool seen[256] = {false};
    while (n && blank(*p))
        p++, n--;
    while (n && blank(p[n - 1]))
        n--;
    if (n < TMS_SECRET_MIN) {
        snprintf(err, err_len, "config: %s: must be at least %d bytes (without surrounding blanks)",
                 key, TMS_SECRET_MIN);
        return -TMS_EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        distinct += !seen[(unsigned char)p[i]];
        seen[(unsigned char)p[i]] = true;
    }
    if (distinct < 8) {
        snprintf(err, err_len,
                 "config: %s: has fewer than 8 different characters; use a random value "
                 "(e.g. openssl rand -hex 32)",
                 key);
        return -TMS_EINVAL;
    }
    for (size_t i = 0; i < sizeof(published_secrets) / sizeof(published_secrets[0]); i++) {
        if (strlen(published_secrets[i]) == n && memcmp(published_secrets[i], p, n) == 0)
            goto published;
    }
    if (contains_word(p, n, "change-me") || contains_word(p, n, "changeme"))
        goto published;
    return 0;
published:
    snprintf(err, err_len,
             "config: %s: is an example value published with TMS (anyone can read it); use a "
             "random value (e.g. openssl rand -hex 32)",
             key);
    return -TMS_EINVAL;
}

int tms_config_read_secret_file(const char *key, const char *path, char *out, size_t size,
                                char *err, size_t err_len)
{
    struct stat st;
    FILE *f;
    size_t n, start = 0;
    int c, rc = -TMS_EINVAL;
    f = fopen(path, "r");
    if (!f) {
        snprintf(err, err_len, "config: %s: cannot read %.900s: %s", key, path, strerror(errno));
        return -TMS_EINVAL;
    }
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, err_len, "config: %s: %.900s is not a regular file", key, path);
        goto out;
    }
    if (st.st_mode & (S_IRWXG | S_IRWXO)) {
        snprintf(err, err_len,
                 "config: %s: %.900s is accessible by group or others (mode %04o); "
                 "chmod 600 it",
                 key, path, (unsigned)(st.st_mode & 07777));
        goto out;
    }
    /* The first line; the rest (a trailing newline, comments) is not the secret. */
    n = 0;
    while ((c = getc(f)) != EOF && c != '\n') {
        if (n + 1 >= size) {
            snprintf(err, err_len, "config: %s: the first line of %.900s is longer than %zu bytes",
                     key, path, size - 1);
            goto out;
        }
        out[n++] = (char)c;
    }
    out[n] = '\0';
    while (n && blank(out[n - 1]))
        out[--n] = '\0';
    while (start < n && blank(out[start]))
        start++;
    memmove(out, out + start, n - start + 1);
    rc = tms_config_check_secret(key, out, err, err_len);
    if (rc) {
        size_t used = strlen(err);
        snprintf(err + used, err_len - used, " (first line of %.900s)", path);
    }
out:
    fclose(f);
    if (rc)
        memset(out, 0, size);
    return rc;
}

/* Every secret given, inline or through its file (used when the inline one is empty). */
static int finish_secrets(tms_config_t *cfg, char *err, size_t err_len)
{
    if (!cfg->auth.jwt_secret[0] && cfg->auth.jwt_secret_file[0] &&
        tms_config_read_secret_file("auth.jwt_secret_file", cfg->auth.jwt_secret_file,
                                    cfg->auth.jwt_secret, sizeof(cfg->auth.jwt_secret), err,
                                    err_len))
        return -TMS_EINVAL;
    if (cfg->auth.jwt_secret[0] &&
        tms_config_check_secret("auth.jwt_secret", cfg->auth.jwt_secret, err, err_len))
        return -TMS_EINVAL;
    if (!cfg->peers.secret[0] && cfg->peers.secret_file[0] &&
        tms_config_read_secret_file("peers.secret_file", cfg->peers.secret_file, cfg->peers.secret,
                                    sizeof(cfg->peers.secret), err, err_len))
        return -TMS_EINVAL;
    if (cfg->peers.secret[0] &&
        tms_config_check_secret("peers.secret", cfg->peers.secret, err, err_len))
        return -TMS_EINVAL;
    return 0;
}

/* server.roles and what a split deployment needs: the peers of the roles that run
 * elsewhere, a shared service credential, and Kafka (the in-process bus cannot
 * carry events between processes). */
static int finish_roles(tms_config_t *cfg, char *err, size_t err_len)
{
    unsigned m;
    if (parse_roles(cfg->server.roles, &m) != 0) {
        snprintf(err, err_len,
                 "config: server.roles: \"%.64s\" is not a list of gateway,auth,task,notifier",
                 cfg->server.roles);
        return -TMS_EINVAL;
    }
    cfg->server.role_mask = m;
    if (m == TMS_ROLE_ALL)
        return 0;
    /* Worker 0 owns the relays, notifier and shared stores of a process that runs
     * every role; a split role scales out as more processes instead. */
    if (cfg->server.workers != 1) {
        snprintf(err, err_len,
                 "config: server.workers: must be 1 when server.roles is not all four roles "
                 "(run more processes of a role instead)");
        return -TMS_EINVAL;
    }
    if (!(m & TMS_ROLE_AUTH) && (m & (TMS_ROLE_GATEWAY | TMS_ROLE_TASK | TMS_ROLE_NOTIFIER))) {
        if (!cfg->peers.auth[0]) {
            snprintf(err, err_len,
                     "config: peers.auth: required when server.roles has no auth (%.64s)",
                     cfg->server.roles);
            return -TMS_EINVAL;
        }
        if (check_addr("peers.auth", cfg->peers.auth, err, err_len))
            return -TMS_EINVAL;
    }
    if (!(m & TMS_ROLE_TASK) && (m & TMS_ROLE_GATEWAY)) {
        if (!cfg->peers.task[0]) {
            snprintf(err, err_len,
                     "config: peers.task: required when server.roles has gateway but no task");
            return -TMS_EINVAL;
        }
        if (check_addr("peers.task", cfg->peers.task, err, err_len))
            return -TMS_EINVAL;
    }
    if (!cfg->peers.secret[0]) {
        snprintf(err, err_len,
                 "config: peers.secret: a service credential of at least %d bytes is required "
                 "when server.roles is not all four roles (set peers.secret or "
                 "peers.secret_file)",
                 TMS_SECRET_MIN);
        return -TMS_EINVAL;
    }
    if (!cfg->events.brokers[0]) {
        snprintf(err, err_len,
                 "config: events.brokers: roles in separate processes exchange events through "
                 "Kafka; set events.brokers when server.roles is not all four roles");
        return -TMS_EINVAL;
    }
    return 0;
}

/* TLS versions named in key (section.tls_protocols): TLSv1.2 and TLSv1.3 only. */
static int check_protocols(const char *key, const char *v, char *err, size_t err_len)
{
    int n = 0;
    while (*v) {
        size_t len = strcspn(v, " ,:\t");
        if (len &&
            !(len == 7 && (strncmp(v, "TLSv1.2", 7) == 0 || strncmp(v, "TLSv1.3", 7) == 0))) {
            snprintf(err, err_len,
                     "config: %s: \"%.*s\" is not supported (TLSv1.2 and TLSv1.3 only)", key,
                     (int)(len > 32 ? 32 : len), v);
            return -TMS_EINVAL;
        }
        n += len > 0;
        v += len;
        v += strspn(v, " ,:\t");
    }
    if (!n) {
        snprintf(err, err_len, "config: %s: names no protocol (TLSv1.2 TLSv1.3)", key);
        return -TMS_EINVAL;
    }
    return 0;
}

/* a and b go together: set one, set the other. */
static int both_or_neither(const char *ka, const char *a, const char *kb, const char *b, char *err,
                           size_t err_len)
{
    if (!a[0] == !b[0])
        return 0;
    snprintf(err, err_len, "config: %s: required with %s", a[0] ? kb : ka, a[0] ? ka : kb);
    return -TMS_EINVAL;
}

/* The TLS settings of the listeners, the roles' mutual TLS and Kafka. */
static int finish_tls(tms_config_t *cfg, char *err, size_t err_len)
{
    unsigned m = cfg->server.role_mask;
    bool split = m != TMS_ROLE_ALL;
    bool internal = split && (m & (TMS_ROLE_AUTH | TMS_ROLE_TASK));
    if (both_or_neither("http.tls_cert", cfg->http.tls_cert, "http.tls_key", cfg->http.tls_key, err,
                        err_len) ||
        both_or_neither("grpc.tls_cert", cfg->grpc.tls_cert, "grpc.tls_key", cfg->grpc.tls_key, err,
                        err_len) ||
        both_or_neither("peers.tls_cert", cfg->peers.tls_cert, "peers.tls_key", cfg->peers.tls_key,
                        err, err_len) ||
        both_or_neither("peers.tls_cert", cfg->peers.tls_cert, "peers.tls_ca", cfg->peers.tls_ca,
                        err, err_len) ||
        both_or_neither("events.tls_cert", cfg->events.tls_cert, "events.tls_key",
                        cfg->events.tls_key, err, err_len) ||
        check_protocols("http.tls_protocols", cfg->http.tls_protocols, err, err_len) ||
        check_protocols("grpc.tls_protocols", cfg->grpc.tls_protocols, err, err_len))
        return -TMS_EINVAL;
    if (cfg->http.tls_client_ca[0] && !cfg->http.tls_cert[0]) {
        snprintf(err, err_len,
                 "config: http.tls_client_ca: needs http.tls_cert (client "
                 "certificates are asked for over TLS only)");
        return -TMS_EINVAL;
    }
    if (cfg->grpc.tls_client_ca[0] && !cfg->grpc.tls_cert[0]) {
        snprintf(err, err_len,
                 "config: grpc.tls_client_ca: needs grpc.tls_cert (client "
                 "certificates are asked for over TLS only)");
        return -TMS_EINVAL;
    }
    if (internal && !(m & TMS_ROLE_GATEWAY) && cfg->grpc.tls_cert[0]) {
        snprintf(err, err_len,
                 "config: grpc.tls_cert: this process (server.roles=%.64s) serves only the "
                 "internal service on grpc.addr; its TLS is peers.tls_cert, peers.tls_key and "
                 "peers.tls_ca",
                 cfg->server.roles);
        return -TMS_EINVAL;
    }
    if (internal && (m & TMS_ROLE_GATEWAY) && cfg->peers.tls_cert[0]) {
        snprintf(err, err_len,
                 "config: peers.tls_cert: mutual TLS between roles needs the gateway in a process "
                 "of its own (server.roles=%.64s would serve the public gRPC API and the internal "
                 "service on one listener)",
                 cfg->server.roles);
        return -TMS_EINVAL;
    }
    if (strcmp(cfg->events.security_protocol, "ssl") != 0) {
        const char *keys_[] = {"events.tls_ca", "events.tls_cert"};
        const char *vals[] = {cfg->events.tls_ca, cfg->events.tls_cert};
        for (int i = 0; i < 2; i++) {
            if (vals[i][0]) {
                snprintf(err, err_len, "config: %s: needs events.security_protocol=ssl", keys_[i]);
                return -TMS_EINVAL;
            }
        }
    }
    return 0;
}

/* http.cors_origins: "*", or origins as browsers send them (scheme://host[:port], no
 * path), comma-separated. */
static int check_origins(const char *v, char *err, size_t err_len)
{
    const char *p = v;
    if (strcmp(v, "*") == 0 || !v[0])
        return 0;
    while (*p) {
        size_t n = strcspn(p, ","), host;
        const char *o = p;
        while (n && *o == ' ')
            o++, n--;
        while (n && o[n - 1] == ' ')
            n--;
        host = strncmp(o, "https://", 8) == 0 ? 8 : strncmp(o, "http://", 7) == 0 ? 7 : 0;
        if (!host || n <= host || memchr(o + host, '/', n - host) || memchr(o, ' ', n) ||
            memchr(o, '*', n)) {
            snprintf(err, err_len,
                     "config: http.cors_origins: \"%.*s\" is not an origin "
                     "(scheme://host[:port]) or *",
                     (int)(n < 200 ? n : 200), o);
            return -TMS_EINVAL;
        }
        p += strcspn(p, ",");
        if (*p == ',')
            p++;
    }
    return 0;
}

int tms_config_finish(tms_config_t *cfg, char *err, size_t err_len)
{
    static const char *const user_stores[] = {"sqlite://", "mongodb://", "mongodb+srv://", NULL};
    static const char *const task_stores[] = {"sqlite://", "postgres://", "postgresql://", NULL};
    static const char *const mailers[] = {"maildir://", "smtp://", "smtps://", NULL};
    if (cfg->data.dir[0] == '\0') {
        snprintf(err, err_len, "config: data.dir: must not be empty");
        return -TMS_EINVAL;
    }
    if (finish_listen("http.addr", cfg->http.addr, sizeof(cfg->http.addr), err, err_len) ||
        finish_listen("grpc.addr", cfg->grpc.addr, sizeof(cfg->grpc.addr), err, err_len) ||
        (cfg->metrics.addr[0] &&
         finish_listen("metrics.addr", cfg->metrics.addr, sizeof(cfg->metrics.addr), err, err_len)))
        return -TMS_EINVAL;
    {
        tms_cidr_list_t proxies;
        char why[200];
        if (tms_cidr_list_parse(cfg->http.trusted_proxies, &proxies, why, sizeof(why)) != 0) {
            snprintf(err, err_len, "config: http.trusted_proxies: %s", why);
            return -TMS_EINVAL;
        }
    }
    if (cfg->metrics.token[0] && strlen(cfg->metrics.token) < 32) {
        snprintf(err, err_len, "config: metrics.token: must be at least 32 bytes");
        return -TMS_EINVAL;
    }
    if (check_origins(cfg->http.cors_origins, err, err_len))
        return -TMS_EINVAL;
    {
        tms_cidr_list_t peers;
        char why[200];
        if (tms_cidr_list_parse(cfg->grpc.trusted_peers, &peers, why, sizeof(why)) != 0) {
            snprintf(err, err_len, "config: grpc.trusted_peers: %s", why);
            return -TMS_EINVAL;
        }
    }
    if (cfg->grpc.max_connection_request_bytes < cfg->grpc.max_message_bytes) {
        snprintf(err, err_len,
                 "config: grpc.max_connection_request_bytes: must be at least "
                 "grpc.max_message_bytes (%lld)",
                 (long long)cfg->grpc.max_message_bytes);
        return -TMS_EINVAL;
    }
    if (cfg->users.url[0] == '\0')
        snprintf(cfg->users.url, sizeof(cfg->users.url), "sqlite://%.900s/tms.db", cfg->data.dir);
    if (cfg->tasks.url[0] == '\0')
        snprintf(cfg->tasks.url, sizeof(cfg->tasks.url), "sqlite://%.900s/tms.db", cfg->data.dir);
    if (cfg->mail.url[0] == '\0')
        snprintf(cfg->mail.url, sizeof(cfg->mail.url), "maildir://%.900s/mail", cfg->data.dir);
    if (cfg->mail.dlq_dir[0] == '\0')
        snprintf(cfg->mail.dlq_dir, sizeof(cfg->mail.dlq_dir), "%.900s/mail-dlq", cfg->data.dir);
    if (check_url("users.url", cfg->users.url, user_stores, err, err_len) ||
        check_url("tasks.url", cfg->tasks.url, task_stores, err, err_len) ||
        check_url("mail.url", cfg->mail.url, mailers, err, err_len))
        return -TMS_EINVAL;
    if (!strchr(cfg->mail.from, '@') || strpbrk(cfg->mail.from, " <>,;\"\r\n")) {
        snprintf(err, err_len, "config: mail.from: \"%.128s\" is not a plain address",
                 cfg->mail.from);
        return -TMS_EINVAL;
    }
    if (finish_secrets(cfg, err, err_len) || finish_roles(cfg, err, err_len))
        return -TMS_EINVAL;
    return finish_tls(cfg, err, err_len);
}

void tms_config_write_defaults(void *file)
{
    FILE *f = file;
    const char *section = "";
    fprintf(f, "# TMS configuration. Every key is shown with its default.\n"
               "# Each key can be overridden by the environment variable TMS_<SECTION>_<KEY>\n"
               "# and on the command line by --set section.key=value.\n");
    for (size_t i = 0; i < NKEYS; i++) {
        if (strcmp(section, keys[i].section) != 0) {
            section = keys[i].section;
            fprintf(f, "\n[%s]\n", section);
        }
        fprintf(f, "# %s\n%s = %s\n", keys[i].doc, keys[i].name, keys[i].def);
    }
}

/* Keys whose value is a secret: printed masked. */
static bool secret_key(const key_t_ *k)
{
    static const char *const names[][2] = {
        {"auth", "jwt_secret"}, {"peers", "secret"}, {"metrics", "token"}};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (strcmp(k->section, names[i][0]) == 0 && strcmp(k->name, names[i][1]) == 0)
            return true;
    }
    return false;
}

/* A URL with the password of its userinfo (scheme://user:password@) and the values of
 * password= parameters replaced by ********. */
static void mask_url(const char *url, char *out, size_t size)
{
    const char *scheme = strstr(url, "://"), *p;
    size_t o = 0;
#define PUT(c)                                                                                     \
    do {                                                                                           \
        if (o + 1 < size)                                                                          \
            out[o++] = (c);                                                                        \
    } while (0)
#define PUTS(s)                                                                                    \
    do {                                                                                           \
        for (const char *q_ = (s); *q_; q_++)                                                      \
            PUT(*q_);                                                                              \
    } while (0)
    p = url;
    if (scheme) {
        const char *auth = scheme + 3, *end = auth + strcspn(auth, "/?#");
        const char *at = NULL, *colon;
        for (const char *q = auth; q < end; q++) {
            if (*q == '@')
                at = q; /* the last one: a password may hold '@' */
        }
        while (p < auth)
            PUT(*p++);
        if (at && (colon = memchr(auth, ':', (size_t)(at - auth)))) {
            while (p <= colon)
                PUT(*p++);
            PUTS("********");
            p = at;
        }
    }
    while (*p) {
        if ((p[0] == '?' || p[0] == '&') && strncasecmp(p + 1, "password=", 9) == 0) {
            for (int i = 0; i < 10; i++)
                PUT(*p++);
            PUTS("********");
            p += strcspn(p, "&#");
            continue;
        }
        PUT(*p++);
    }
    out[o < size ? o : size - 1] = '\0';
#undef PUT
#undef PUTS
}

void tms_config_write(const tms_config_t *cfg, void *file)
{
    FILE *f = file;
    const char *section = "";
    fprintf(f, "# TMS configuration in effect: every key with its value after the config file,\n"
               "# the TMS_<SECTION>_<KEY> environment variables and --set (secrets masked).\n"
               "# `tms config --defaults` prints the defaults (config/tms.conf).\n");
    for (size_t i = 0; i < NKEYS; i++) {
        const key_t_ *k = &keys[i];
        const char *base = (const char *)cfg + k->offset;
        char value[1100];
        if (strcmp(section, k->section) != 0) {
            section = k->section;
            fprintf(f, "\n[%s]\n", section);
        }
        if (k->type == T_INT)
            snprintf(value, sizeof(value), "%lld", (long long)*(const int64_t *)base);
        else if (secret_key(k) && base[0])
            snprintf(value, sizeof(value), "********");
        else if (strcmp(k->name, "url") == 0)
            mask_url(base, value, sizeof(value));
        else
            snprintf(value, sizeof(value), "%s", base);
        fprintf(f, "# %s\n", k->doc);
        switch (cfg->source[i]) {
        case TMS_CONFIG_FROM_FILE:
            fprintf(f, "# (from the config file; default %s)\n", k->def[0] ? k->def : "empty");
            break;
        case TMS_CONFIG_FROM_ENV: {
            char var[128];
            size_t n = (size_t)snprintf(var, sizeof(var), "TMS_%s_%s", k->section, k->name);
            for (size_t j = 0; j < n && j < sizeof(var); j++)
                var[j] = (char)toupper((unsigned char)var[j]);
            fprintf(f, "# (from %s; default %s)\n", var, k->def[0] ? k->def : "empty");
            break;
        }
        case TMS_CONFIG_FROM_SET:
            fprintf(f, "# (from --set; default %s)\n", k->def[0] ? k->def : "empty");
            break;
        default:
            break;
        }
        fprintf(f, "%s = %s\n", k->name, value);
    }
}

/* Levenshtein distance of a and b (both shorter than 128 bytes), case-insensitive. */
static size_t distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), row[128];
    if (la >= 128 || lb >= 128)
        return SIZE_MAX;
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t cost = toupper((unsigned char)a[i - 1]) != toupper((unsigned char)b[j - 1]);
            size_t best = diag + cost;
            if (row[j] + 1 < best)
                best = row[j] + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

extern char **environ;

void tms_config_check_env(void (*warn)(void *arg, const char *line), void *arg)
{
    for (char **e = environ; e && *e; e++) {
        char name[128], var[128], best_var[128] = "", line[512];
        const key_t_ *best = NULL;
        size_t n = strcspn(*e, "="), best_d = SIZE_MAX;
        bool known = false;
        if (strncmp(*e, "TMS_", 4) != 0 || strncmp(*e, "TMS_FAULT_", 10) == 0 || n >= sizeof(name))
            continue;
        memcpy(name, *e, n);
        name[n] = '\0';
        for (size_t i = 0; i < NKEYS && !known; i++) {
            size_t len =
                (size_t)snprintf(var, sizeof(var), "TMS_%s_%s", keys[i].section, keys[i].name);
            size_t d;
            for (size_t j = 0; j < len && j < sizeof(var); j++)
                var[j] = (char)toupper((unsigned char)var[j]);
            if (strcmp(var, name) == 0) {
                known = true;
                break;
            }
            d = distance(name, var);
            if (d < best_d) {
                best_d = d;
                best = &keys[i];
                snprintf(best_var, sizeof(best_var), "%s", var);
            }
        }
        if (known || !best)
            continue;
        snprintf(line, sizeof(line),
                 "%s is not a setting; did you mean %s (%s.%s)? ignored (the settings' variables "
                 "are listed by `tms config --defaults`: TMS_<SECTION>_<KEY>)",
                 name, best_var, best->section, best->name);
        warn(arg, line);
    }
}
