/* The server module (src/server/) in this process, as the fuzzers use it: one worker
 * on the test's loop with every role on an in-memory SQLite store. It answers REST on
 * a free port, stops in steps with every handle it opened closed (the loop ends and
 * closes), binds nothing but http.addr when asked, and a start that fails closes what
 * it started. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <sodium.h>
#include <uv.h>

#include "core/log.h"
#include "server/server.h"
#include "test.h"

static char data_dir[64];

static void set(tms_config_t *cfg, const char *assignment)
{
    char err[512];
    if (tms_config_set(cfg, assignment, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        abort();
    }
}

/* Defaults, but stores in memory, a free port, a fresh key and the cheapest hash. */
static void configure(tms_config_t *cfg, const char *http_addr)
{
    char buf[1200], err[512];
    unsigned char raw[32];
    tms_config_defaults(cfg);
    snprintf(buf, sizeof buf, "http.addr=%s", http_addr);
    set(cfg, buf);
    set(cfg, "users.url=sqlite://:memory:");
    set(cfg, "tasks.url=sqlite://:memory:");
    set(cfg, "auth.argon2_opslimit=1");
    set(cfg, "auth.argon2_memlimit_kib=8");
    snprintf(buf, sizeof buf, "data.dir=%s", data_dir);
    set(cfg, buf);
    randombytes_buf(raw, sizeof raw);
    strcpy(buf, "auth.jwt_secret=");
    sodium_bin2hex(buf + strlen(buf), sizeof buf - strlen(buf), raw, sizeof raw);
    set(cfg, buf);
    if (tms_config_finish(cfg, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        abort();
    }
}

/* A listening socket on 127.0.0.1 without SO_REUSEPORT: whoever binds its port after
 * it fails. Returns the fd; *port gets the port. */
static int hold_port(int *port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 1) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0)
        abort();
    *port = ntohs(a.sin_port);
    return fd;
}

/* One request on its own connection from another thread, while this one runs the
 * server's loop; the answer read to the end. */
typedef struct exchange {
    int port;
    const char *request;
    char answer[8192];
    atomic_int done;
} exchange_t;

static void *client_main(void *arg)
{
    exchange_t *x = arg;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    size_t got = 0;
    ssize_t n;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    a.sin_port = htons((uint16_t)x->port);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        write(fd, x->request, strlen(x->request)) == (ssize_t)strlen(x->request)) {
        while (got + 1 < sizeof x->answer &&
               (n = read(fd, x->answer + got, sizeof x->answer - 1 - got)) > 0)
            got += (size_t)n;
    }
    x->answer[got] = '\0';
    if (fd >= 0)
        close(fd);
    atomic_store(&x->done, 1);
    return NULL;
}

static void exchange(uv_loop_t *loop, int port, const char *request, char *answer, size_t size)
{
    exchange_t x = {.port = port, .request = request};
    pthread_t t;
    pthread_create(&t, NULL, client_main, &x);
    while (!atomic_load(&x.done)) {
        uv_run(loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
    pthread_join(t, NULL);
    snprintf(answer, size, "%s", x.answer);
}

static void on_stopped(void *arg, int clean)
{
    *(int *)arg = clean ? 1 : 2;
}

static void test_serves_rest_and_stops_clean(void)
{
    static const char body[] =
        "{\"email\":\"server-test@example.com\",\"password\":\"a-good-pass\"}";
    tms_config_t *cfg = calloc(1, sizeof(*cfg));
    tms_server_t *srv;
    uv_loop_t loop;
    char req[512], answer[8192];
    int port, stopped = 0;
    configure(cfg, "127.0.0.1:0");
    uv_loop_init(&loop);
    srv = tms_server_start(&loop, cfg, &(tms_server_options_t){.http_only = true});
    CHECK(srv != NULL);
    if (!srv)
        return;
    port = tms_server_http_port(srv);
    CHECK(port > 0);
    exchange(&loop, port, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", answer,
             sizeof answer);
    CHECK(strncmp(answer, "HTTP/1.1 200", 12) == 0);
    snprintf(req, sizeof req,
             "POST /api/auth/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
             strlen(body), body);
    exchange(&loop, port, req, answer, sizeof answer);
    CHECK(strncmp(answer, "HTTP/1.1 201", 12) == 0);
    CHECK(strstr(answer, "\"token\"") != NULL);
    CHECK_EQ_INT(tms_rest_pending(tms_server_rest(srv)), 0);

    tms_server_stop(srv, on_stopped, &stopped);
    uv_run(&loop, UV_RUN_DEFAULT); /* ends only when every handle the server had is closed */
    CHECK_EQ_INT(stopped, 1);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
    free(cfg);
}

/* http_only: gRPC and metrics addresses that are taken do not matter, as nothing
 * binds them; without it the same start fails on them. */
static void test_http_only_binds_nothing_else(void)
{
    tms_config_t *cfg = calloc(1, sizeof(*cfg));
    tms_server_t *srv;
    uv_loop_t loop;
    char buf[64];
    int grpc_port, metrics_port, stopped = 0;
    int grpc_fd = hold_port(&grpc_port), metrics_fd = hold_port(&metrics_port);
    configure(cfg, "127.0.0.1:0");
    snprintf(buf, sizeof buf, "grpc.addr=127.0.0.1:%d", grpc_port);
    set(cfg, buf);
    snprintf(buf, sizeof buf, "metrics.addr=127.0.0.1:%d", metrics_port);
    set(cfg, buf);
    uv_loop_init(&loop);

    srv = tms_server_start(&loop, cfg, &(tms_server_options_t){.http_only = true});
    CHECK(srv != NULL);
    if (srv)
        tms_server_stop(srv, on_stopped, &stopped);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(stopped, 1);

    srv = tms_server_start(&loop, cfg, NULL);
    CHECK(srv == NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
    close(grpc_fd);
    close(metrics_fd);
    free(cfg);
}

/* A taken http.addr: NULL, and what had started (stores, actors, pools) closes as the
 * loop runs, so the loop ends and closes with nothing left (ASan: nothing leaked). */
static void test_failed_start_closes_what_started(void)
{
    tms_config_t *cfg = calloc(1, sizeof(*cfg));
    uv_loop_t loop;
    char addr[32];
    int port, fd = hold_port(&port);
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    configure(cfg, addr);
    uv_loop_init(&loop);
    CHECK(tms_server_start(&loop, cfg, &(tms_server_options_t){.http_only = true}) == NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
    close(fd);
    free(cfg);
}

static int remove_data_dir(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", data_dir);
    return system(cmd);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    snprintf(data_dir, sizeof data_dir, "/tmp/tms-server-test.XXXXXX");
    if (!mkdtemp(data_dir))
        return 1;
    tms_log_set_level(TMS_LOG_WARN);
    RUN_TEST(test_serves_rest_and_stops_clean);
    RUN_TEST(test_http_only_binds_nothing_else);
    RUN_TEST(test_failed_start_closes_what_started);
    (void)remove_data_dir();
    TEST_EXIT();
}
