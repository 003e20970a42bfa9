/* Config: defaults, file, environment and --set layering, and one clear error
 * naming the key for every kind of bad value. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <sodium.h>

#include "core/config.h"
#include "core/status.h"
#include "test.h"

/* A random 32-byte secret made at start: any literal in the repository is published,
 * and refused by design. */
static char GOOD[33];

static void test_defaults(void)
{
    tms_config_t c;
    char err[256];
    tms_config_defaults(&c);
    CHECK_EQ_STR(c.http.addr, "0.0.0.0:3000");
    CHECK_EQ_STR(c.grpc.addr, "0.0.0.0:50051");
    CHECK_EQ_INT(c.auth.token_ttl, 3600);
    CHECK_EQ_INT(c.ratelimit.api_per_minute, 100);
    CHECK_EQ_INT(c.ratelimit.login_per_15min, 5);
    CHECK_EQ_INT(c.ratelimit.task_create_per_hour, 10);
    CHECK_EQ_INT(c.http.max_head_bytes, 16384);
    CHECK_EQ_INT(c.http.max_body_bytes, 1048576);
    CHECK_EQ_INT(tms_config_finish(&c, err, sizeof(err)), 0);
    CHECK_EQ_STR(c.users.url, "sqlite://./data/tms.db");
    CHECK_EQ_STR(c.mail.url, "maildir://./data/mail");
}

static void test_layers(void)
{
    tms_config_t c;
    char err[256] = "";
    char path[] = "/tmp/tms_config_testXXXXXX";
    int fd = mkstemp(path);
    FILE *f = fdopen(fd, "w");
    fprintf(f, "[auth]\ntoken_ttl = 100\nissuer = file\n[http]\naddr = 127.0.0.1:1\n");
    fclose(f);
    tms_config_defaults(&c);
    CHECK_EQ_INT(tms_config_load_file(&c, path, err, sizeof(err)), 0);
    CHECK_EQ_INT(c.auth.token_ttl, 100);
    setenv("TMS_AUTH_TOKEN_TTL", "200", 1);
    CHECK_EQ_INT(tms_config_load_env(&c, err, sizeof(err)), 0);
    CHECK_EQ_INT(c.auth.token_ttl, 200);
    CHECK_EQ_STR(c.auth.issuer, "file");
    CHECK_EQ_INT(tms_config_set(&c, "auth.token_ttl=300", err, sizeof(err)), 0);
    CHECK_EQ_INT(c.auth.token_ttl, 300);
    unsetenv("TMS_AUTH_TOKEN_TTL");
    remove(path);
}

static void expect_error(const char *assignment, const char *needle)
{
    tms_config_t c;
    char err[256] = "";
    tms_config_defaults(&c);
    int rc = tms_config_set(&c, assignment, err, sizeof(err));
    if (rc == 0)
        rc = tms_config_finish(&c, err, sizeof(err));
    CHECK_EQ_INT(rc, -TMS_EINVAL);
    CHECK(strstr(err, needle) != NULL);
    CHECK(strchr(err, '\n') == NULL);
}

static void test_errors(void)
{
    expect_error("auth.token_ttl=abc", "auth.token_ttl");
    expect_error("auth.token_ttl=0", "auth.token_ttl");
    expect_error("auth.token_ttl=12x", "auth.token_ttl");
    expect_error("foo.bar=1", "foo.bar");
    expect_error("nodot=1", "section.key=value");
    expect_error("tasks.migrate=sometimes", "tasks.migrate");
    expect_error("auth.jwt_secret=short", "auth.jwt_secret");
    expect_error("http.addr=nowhere", "http.addr");
    expect_error("http.addr=1.2.3.4:99999", "http.addr");
    expect_error("users.url=mysql://x", "users.url");
    expect_error("ratelimit.api_per_minute=-1", "ratelimit.api_per_minute");
    /* grpc.trusted_peers (issue 21): one line naming the key and the bad entry */
    expect_error("grpc.trusted_peers=10.0.0.0/8,bogus", "config: grpc.trusted_peers: \"bogus\"");
    expect_error("grpc.trusted_peers=10.0.0.1/8", "grpc.trusted_peers");
    expect_error("grpc.trusted_peers=::1/200", "grpc.trusted_peers");
}

/* mail.url takes smtp:// and smtps:// besides maildir://; SMTP settings are bounded. */
static void test_smtp(void)
{
    tms_config_t c;
    char err[256] = "";
    tms_config_defaults(&c);
    CHECK_EQ_INT(tms_config_set(&c, "mail.url=smtps://u:p@mail.example.com:465", err, sizeof(err)),
                 0);
    CHECK_EQ_INT(tms_config_finish(&c, err, sizeof(err)), 0);
    CHECK_EQ_STR(c.mail.dlq_dir, "./data/mail-dlq");
    CHECK_EQ_STR(c.mail.starttls, "auto");
    CHECK_EQ_INT(c.mail.timeout_ms, 5000);
    CHECK_EQ_INT(c.mail.breaker_window, 10);
    CHECK_EQ_INT(c.mail.breaker_threshold, 50);
    CHECK_EQ_INT(c.mail.breaker_cooldown_ms, 10000);
    expect_error("mail.url=ftp://x", "mail.url");
    expect_error("mail.starttls=maybe", "mail.starttls");
    expect_error("mail.breaker_window=65", "mail.breaker_window");
    expect_error("mail.retry_attempts=0", "mail.retry_attempts");
}

/* server.roles and the split deployment's checks, each error naming its key. */
static void test_roles(void)
{
    tms_config_t c;
    char err[512] = "", set[128];
    char path[] = "/tmp/tms_config_secretXXXXXX";
    int fd;
    FILE *f;
    tms_config_defaults(&c);
    CHECK_EQ_STR(c.server.roles, "gateway,auth,task,notifier");
    CHECK_EQ_INT(c.peers.pool_size, 2);
    CHECK_EQ_INT(tms_config_finish(&c, err, sizeof(err)), 0);
    CHECK_EQ_INT(c.server.role_mask, TMS_ROLE_ALL);
    expect_error("server.roles=gateway,billing", "server.roles");
    expect_error("server.roles=", "server.roles");
    expect_error("server.roles=gateway", "peers.auth");
    expect_error("server.roles=auth", "peers.secret");

    tms_config_defaults(&c);
    CHECK_EQ_INT(tms_config_set(&c, "server.roles=gateway, notifier", err, sizeof(err)), 0);
    CHECK_EQ_INT(tms_config_set(&c, "peers.auth=127.0.0.1:1", err, sizeof(err)), 0);
    CHECK_EQ_INT(tms_config_finish(&c, err, sizeof(err)), -TMS_EINVAL);
    CHECK(strstr(err, "peers.task") != NULL);
    CHECK_EQ_INT(tms_config_set(&c, "peers.task=nohost", err, sizeof(err)), 0);
    CHECK_EQ_INT(tms_config_finish(&c, err, sizeof(err)), -TMS_EINVAL);
    CHECK(strstr(err, "peers.task") != NULL);
    CHECK_EQ_INT(tms_config_set(&c, "peers.task=127.0.0.1:2", err, sizeof(err)), 0);
    CHECK_EQ_INT(tms_config_finish(&c, err, sizeof(err)), -TMS_EINVAL);
    CHECK(strstr(err, "peers.secret") != NULL);

    fd = mkstemp(path);
    f = fdopen(fd, "w");
    fprintf(f, "  %s  \r\n# a comment\n", GOOD);
    fclose(f);
    snprintf(set, sizeof(set), "peers.secret_file=%s", path);
    CHECK_EQ_INT(tms_config_set(&c, set, err, sizeof(err)), 0);
    CHECK_EQ_INT(tms_config_finish(&c, err, sizeof(err)), -TMS_EINVAL);
    CHECK(strstr(err, "events.brokers") != NULL);
    CHECK_EQ_STR(c.peers.secret, GOOD);
    CHECK_EQ_INT(tms_config_set(&c, "events.brokers=127.0.0.1:9092", err, sizeof(err)), 0);
    CHECK_EQ_INT(tms_config_finish(&c, err, sizeof(err)), 0);
    CHECK_EQ_INT(c.server.role_mask, TMS_ROLE_GATEWAY | TMS_ROLE_NOTIFIER);
    /* several loops only in a process that runs every role */
    CHECK_EQ_INT(tms_config_set(&c, "server.workers=2", err, sizeof(err)), 0);
    CHECK_EQ_INT(tms_config_finish(&c, err, sizeof(err)), -TMS_EINVAL);
    CHECK(strstr(err, "server.workers") != NULL);
    CHECK_EQ_INT(tms_config_set(&c, "server.roles=gateway,auth,task,notifier", err, sizeof(err)),
                 0);
    CHECK_EQ_INT(tms_config_finish(&c, err, sizeof(err)), 0);
    remove(path);
}

/* Settings applied in order, then tms_config_finish must fail naming needle. */
static void expect_finish_error(const char *const *sets, const char *needle)
{
    tms_config_t c;
    char err[512] = "";
    tms_config_defaults(&c);
    for (; *sets; sets++)
        CHECK_EQ_INT(tms_config_set(&c, *sets, err, sizeof(err)), 0);
    CHECK_EQ_INT(tms_config_finish(&c, err, sizeof(err)), -TMS_EINVAL);
    if (!strstr(err, needle)) {
        fprintf(stderr, "  wanted \"%s\" in: %s\n", needle, err);
        CHECK(0);
    }
}

/* TLS settings that do not go together (issue 22), each error naming its key; the files
 * themselves are checked by io/tls at start. */
static void test_tls_settings(void)
{
    tms_config_t c;
    char err[512] = "", secret[64];
    snprintf(secret, sizeof(secret), "peers.secret=%s", GOOD);
    tms_config_defaults(&c);
    CHECK_EQ_STR(c.http.tls_protocols, "TLSv1.2 TLSv1.3");
    CHECK(strstr(c.grpc.tls_ciphers, "ECDHE-ECDSA-AES128-GCM-SHA256") == c.grpc.tls_ciphers);
    CHECK_EQ_STR(c.events.security_protocol, "plaintext");
    CHECK_EQ_INT(c.http.tls_handshake_timeout, 10);
    CHECK_EQ_INT(tms_config_set(&c, "http.tls_cert=/c.pem", err, sizeof(err)), 0);
    CHECK_EQ_INT(tms_config_set(&c, "http.tls_key=/k.pem", err, sizeof(err)), 0);
    CHECK_EQ_INT(tms_config_set(&c, "http.tls_protocols=TLSv1.3", err, sizeof(err)), 0);
    CHECK_EQ_INT(tms_config_finish(&c, err, sizeof(err)), 0);
    expect_error("events.security_protocol=sasl_ssl", "events.security_protocol");
    expect_error("http.tls_handshake_timeout=0", "http.tls_handshake_timeout");
    expect_finish_error((const char *[]){"http.tls_cert=/c", NULL},
                        "http.tls_key: required with http.tls_cert");
    expect_finish_error((const char *[]){"grpc.tls_key=/k", NULL},
                        "grpc.tls_cert: required with grpc.tls_key");
    expect_finish_error((const char *[]){"http.tls_client_ca=/ca", NULL},
                        "http.tls_client_ca: needs http.tls_cert");
    expect_finish_error((const char *[]){"http.tls_protocols=TLSv1.1 TLSv1.2", NULL},
                        "http.tls_protocols: \"TLSv1.1\"");
    expect_finish_error((const char *[]){"grpc.tls_protocols=, ,", NULL}, "grpc.tls_protocols");
    expect_finish_error((const char *[]){"peers.tls_cert=/c", "peers.tls_key=/k", NULL},
                        "peers.tls_ca: required with peers.tls_cert");
    expect_finish_error((const char *[]){"events.tls_ca=/ca", NULL},
                        "events.tls_ca: needs events.security_protocol=ssl");
    expect_finish_error(
        (const char *[]){"events.security_protocol=ssl", "events.tls_cert=/c", NULL},
        "events.tls_key");
    /* The internal listener's TLS is the peers'; one listener cannot be both. */
    expect_finish_error((const char *[]){"server.roles=auth", secret, "events.brokers=k:9092",
                                         "grpc.tls_cert=/c", "grpc.tls_key=/k", NULL},
                        "grpc.tls_cert: this process (server.roles=auth) serves only the internal");
    expect_finish_error((const char *[]){"server.roles=gateway,auth", secret,
                                         "events.brokers=k:9092", "peers.task=127.0.0.1:1",
                                         "peers.tls_cert=/c", "peers.tls_key=/k",
                                         "peers.tls_ca=/ca", NULL},
                        "peers.tls_cert: mutual TLS between roles needs the gateway");
}

static void expect_secret_refused(const char *secret, const char *needle)
{
    char err[512] = "";
    CHECK_EQ_INT(tms_config_check_secret("auth.jwt_secret", secret, err, sizeof(err)), -TMS_EINVAL);
    CHECK(strstr(err, "auth.jwt_secret") != NULL);
    CHECK(strstr(err, needle) != NULL);
    CHECK(strchr(err, '\n') == NULL);
    CHECK(strlen(secret) < 8 || strstr(err, secret) == NULL); /* never echoed */
}

static void test_secret_rules(void)
{
    char err[512] = "";
    char shorter[64];
    CHECK_EQ_INT(tms_config_check_secret("auth.jwt_secret", GOOD, err, sizeof(err)), 0);
    snprintf(shorter, sizeof(shorter), "%.31s", GOOD);
    expect_secret_refused(shorter, "at least 32 bytes");
    /* blanks around a secret do not count */
    snprintf(shorter, sizeof(shorter), "   %.29s  \n", GOOD);
    expect_secret_refused(shorter, "at least 32 bytes");
    expect_secret_refused("kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk", "different characters");
    /* every value published with TMS (deploy/compose.yaml before issue 17, tests) */
    expect_secret_refused("change-me-jwt-secret-0123456789abcdef0123", "example value");
    expect_secret_refused("change-me-service-credential-0123456789", "example value");
    expect_secret_refused("integration-test-secret-0123456789abcdefghijklmn", "example value");
    expect_secret_refused("0123456789abcdef0123456789abcdef", "example value");
    expect_secret_refused("  0123456789abcdef0123456789abcdef-test-key\n", "example value");
    /* an edited placeholder is still a placeholder */
    expect_secret_refused("CHANGE-ME-jwt-secret-0123456789abcdef9999", "example value");
    snprintf(shorter, sizeof(shorter), "changeme-%s", GOOD);
    expect_secret_refused(shorter, "example value");
}

/* Writes text into a new file with mode; the path goes to path (a mkstemp template). */
static void write_file(char *path, const char *text, int mode)
{
    int fd = mkstemp(path);
    FILE *f = fdopen(fd, "w");
    fputs(text, f);
    fclose(f);
    CHECK_EQ_INT(chmod(path, (mode_t)mode), 0);
}

static void test_secret_files(void)
{
    char out[64], err[1200] = "", text[128];
    char path[] = "/tmp/tms_config_secretXXXXXX";
    tms_config_t c;
    char set[128];

    /* the length counts after the cut at the first newline, not the file's size */
    write_file(path, "abc\n# a comment that makes the file longer than 32 bytes\n", 0600);
    CHECK_EQ_INT(tms_config_read_secret_file("auth.jwt_secret_file", path, out, sizeof(out), err,
                                             sizeof(err)),
                 -TMS_EINVAL);
    CHECK(strstr(err, "auth.jwt_secret_file") != NULL);
    CHECK(strstr(err, "at least 32 bytes") != NULL);
    CHECK(strstr(err, path) != NULL);
    CHECK_EQ_STR(out, "");
    remove(path);

    /* group- or world-accessible: refused, naming the file and its mode */
    for (int i = 0; i < 3; i++) {
        static const int modes[] = {0640, 0604, 0620};
        char want[16];
        snprintf(path, sizeof(path), "/tmp/tms_config_secretXXXXXX");
        snprintf(text, sizeof(text), "%s\n", GOOD);
        write_file(path, text, modes[i]);
        CHECK_EQ_INT(tms_config_read_secret_file("peers.secret_file", path, out, sizeof(out), err,
                                                 sizeof(err)),
                     -TMS_EINVAL);
        snprintf(want, sizeof(want), "mode %04o", modes[i]);
        CHECK(strstr(err, "peers.secret_file") != NULL);
        CHECK(strstr(err, path) != NULL);
        CHECK(strstr(err, want) != NULL);
        CHECK(strstr(err, GOOD) == NULL);
        CHECK(strchr(err, '\n') == NULL);
        remove(path);
    }

    /* 0400 and 0600 are fine; the first line without blanks is the secret */
    snprintf(path, sizeof(path), "/tmp/tms_config_secretXXXXXX");
    snprintf(text, sizeof(text), "\t%s \r\nsecond line\n", GOOD);
    write_file(path, text, 0400);
    CHECK_EQ_INT(tms_config_read_secret_file("auth.jwt_secret_file", path, out, sizeof(out), err,
                                             sizeof(err)),
                 0);
    CHECK_EQ_STR(out, GOOD);
    /* through the config: auth.jwt_secret_file fills auth.jwt_secret */
    tms_config_defaults(&c);
    snprintf(set, sizeof(set), "auth.jwt_secret_file=%s", path);
    CHECK_EQ_INT(tms_config_set(&c, set, err, sizeof(err)), 0);
    CHECK_EQ_INT(tms_config_finish(&c, err, sizeof(err)), 0);
    CHECK_EQ_STR(c.auth.jwt_secret, GOOD);
    /* a first line longer than the buffer is refused, not cut */
    CHECK_EQ_INT(
        tms_config_read_secret_file("auth.jwt_secret_file", path, out, 20, err, sizeof(err)),
        -TMS_EINVAL);
    CHECK(strstr(err, "longer than") != NULL);
    remove(path);

    /* published values are refused from files too, and inline peers.secret as well */
    snprintf(path, sizeof(path), "/tmp/tms_config_secretXXXXXX");
    write_file(path, "change-me-service-credential-0123456789\n", 0600);
    CHECK_EQ_INT(
        tms_config_read_secret_file("peers.secret_file", path, out, sizeof(out), err, sizeof(err)),
        -TMS_EINVAL);
    CHECK(strstr(err, "example value") != NULL);
    remove(path);
    expect_error("peers.secret=change-me-service-credential-0123456789", "peers.secret");
    expect_error("auth.jwt_secret_file=/nonexistent/jwt.secret", "auth.jwt_secret_file");
}

static void test_bad_file(void)
{
    tms_config_t c;
    char err[256] = "";
    char path[] = "/tmp/tms_config_testXXXXXX";
    int fd = mkstemp(path);
    FILE *f = fdopen(fd, "w");
    fprintf(f, "[auth]\nno_such_key = 1\n");
    fclose(f);
    tms_config_defaults(&c);
    CHECK_EQ_INT(tms_config_load_file(&c, path, err, sizeof(err)), -TMS_EINVAL);
    CHECK(strstr(err, "auth.no_such_key") != NULL);
    CHECK_EQ_INT(tms_config_load_file(&c, "/nonexistent/tms.conf", err, sizeof(err)), -TMS_EIO);
    remove(path);
}

/* Listen addresses: a port alone, :port, localhost and bracketed IPv6 are written in
 * their numeric form; names and bare IPv6 are refused naming the key. */
static void test_listen_forms(void)
{
    static const char *const in[][2] = {
        {"3000", "0.0.0.0:3000"},
        {":3000", "0.0.0.0:3000"},
        {"localhost:3000", "127.0.0.1:3000"},
        {"LocalHost:1", "127.0.0.1:1"},
        {"[::1]:3000", "[::1]:3000"},
        {"127.0.0.1:0", "127.0.0.1:0"},
        {"0.0.0.0:3000", "0.0.0.0:3000"},
    };
    char out[160], err[256];
    for (size_t i = 0; i < sizeof(in) / sizeof(in[0]); i++) {
        CHECK_EQ_INT(
            tms_config_parse_listen("http.addr", in[i][0], out, sizeof(out), err, sizeof(err)), 0);
        CHECK_EQ_STR(out, in[i][1]);
    }
    static const char *const bad[] = {
        "example.com:3000", "::1:3000", "[::1]",    "[nope]:1", "3000x", ":",
        "1.2.3.4:-1",       "",         "1.2.3.4:", "[::1]:"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        CHECK_EQ_INT(
            tms_config_parse_listen("grpc.addr", bad[i], out, sizeof(out), err, sizeof(err)),
            -TMS_EINVAL);
        CHECK(strstr(err, "grpc.addr") != NULL);
    }
    /* finish rewrites the three listeners */
    tms_config_t c;
    tms_config_defaults(&c);
    CHECK_EQ_INT(tms_config_set(&c, "http.addr=8080", err, sizeof(err)), 0);
    CHECK_EQ_INT(tms_config_set(&c, "metrics.addr=localhost:9", err, sizeof(err)), 0);
    CHECK_EQ_INT(tms_config_finish(&c, err, sizeof(err)), 0);
    CHECK_EQ_STR(c.http.addr, "0.0.0.0:8080");
    CHECK_EQ_STR(c.metrics.addr, "127.0.0.1:9");
    expect_error("http.addr=example.com:80", "http.addr");
    expect_error("http.trusted_proxies=10.0.0.0/8 nonsense", "http.trusted_proxies");
    expect_error("http.cors_origins=app.example.com", "http.cors_origins");
    expect_error("http.cors_origins=https://a.example/path", "http.cors_origins");
    expect_error("http.cors_origins=https://*.example", "http.cors_origins");
    expect_error("auth.registration=maybe", "auth.registration");
    expect_error("auth.login_revokes_others=yes", "auth.login_revokes_others");
}

static void on_warning(void *arg, const char *line)
{
    char *out = arg;
    snprintf(out + strlen(out), 1024 - strlen(out), "%s\n", line);
}

/* A TMS_ variable that names no key is reported with the closest key; the keys'
 * variables and the fault hooks are not. */
static void test_env_warnings(void)
{
    char out[1024] = "";
    setenv("TMS_HTTP_ADR", "x", 1);
    setenv("TMS_HTTP_ADDR", "127.0.0.1:1", 1);
    setenv("TMS_FAULT_SOMETHING", "1", 1);
    tms_config_check_env(on_warning, out);
    CHECK(strstr(out, "TMS_HTTP_ADR is not a setting; did you mean TMS_HTTP_ADDR (http.addr)?") !=
          NULL);
    CHECK(strstr(out, "TMS_HTTP_ADDR is") == NULL);
    CHECK(strstr(out, "TMS_FAULT") == NULL);
    unsetenv("TMS_HTTP_ADR");
    unsetenv("TMS_HTTP_ADDR");
    unsetenv("TMS_FAULT_SOMETHING");
}

/* tms config: values in effect, their source, secrets and URL passwords masked. */
static void test_write_effective(void)
{
    tms_config_t c;
    char err[256], *text = NULL, set[128];
    size_t len = 0;
    FILE *f;
    tms_config_defaults(&c);
    snprintf(set, sizeof(set), "auth.jwt_secret=%s", GOOD);
    CHECK_EQ_INT(tms_config_set(&c, set, err, sizeof(err)), 0);
    CHECK_EQ_INT(tms_config_set(&c, "tasks.url=postgres://tms:hunter2hunter2@db/tms?password=pw2",
                                err, sizeof(err)),
                 0);
    CHECK_EQ_INT(tms_config_set(&c, "auth.token_ttl=600", err, sizeof(err)), 0);
    CHECK_EQ_INT(tms_config_finish(&c, err, sizeof(err)), 0);
    f = open_memstream(&text, &len);
    tms_config_write(&c, f);
    fclose(f);
    CHECK(strstr(text, GOOD) == NULL);
    CHECK(strstr(text, "hunter2") == NULL);
    CHECK(strstr(text, "pw2") == NULL);
    CHECK(strstr(text, "\njwt_secret = ********\n") != NULL);
    CHECK(strstr(text, "\nurl = postgres://tms:********@db/tms?password=********\n") != NULL);
    CHECK(strstr(text, "# (from --set; default 3600)\ntoken_ttl = 600\n") != NULL);
    CHECK(strstr(text, "\nurl = sqlite://./data/tms.db\n") != NULL); /* derived */
    CHECK(strstr(text, "\ntoken = \n") != NULL);                     /* empty secret */
    free(text);
}

int main(void)
{
    unsigned char raw[16];
    randombytes_buf(raw, sizeof(raw));
    sodium_bin2hex(GOOD, sizeof(GOOD), raw, sizeof(raw));
    RUN_TEST(test_defaults);
    RUN_TEST(test_layers);
    RUN_TEST(test_errors);
    RUN_TEST(test_bad_file);
    RUN_TEST(test_smtp);
    RUN_TEST(test_roles);
    RUN_TEST(test_tls_settings);
    RUN_TEST(test_secret_rules);
    RUN_TEST(test_secret_files);
    RUN_TEST(test_listen_forms);
    RUN_TEST(test_env_warnings);
    RUN_TEST(test_write_effective);
    TEST_EXIT();
}
