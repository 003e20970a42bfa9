/* Config: defaults, file, environment and --set layering, and one clear error
 * naming the key for every kind of bad value. */
#include <stdio.h>
#include <stdlib.h>

#include "core/config.h"
#include "core/status.h"
#include "test.h"

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
    CHECK_EQ_STR(c.mail.starttls, "try");
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
    fprintf(f, "0123456789abcdef0123\n");
    fclose(f);
    snprintf(set, sizeof(set), "peers.secret_file=%s", path);
    CHECK_EQ_INT(tms_config_set(&c, set, err, sizeof(err)), 0);
    CHECK_EQ_INT(tms_config_finish(&c, err, sizeof(err)), -TMS_EINVAL);
    CHECK(strstr(err, "events.brokers") != NULL);
    CHECK_EQ_STR(c.peers.secret, "0123456789abcdef0123");
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

int main(void)
{
    RUN_TEST(test_defaults);
    RUN_TEST(test_layers);
    RUN_TEST(test_errors);
    RUN_TEST(test_bad_file);
    RUN_TEST(test_smtp);
    RUN_TEST(test_roles);
    TEST_EXIT();
}
