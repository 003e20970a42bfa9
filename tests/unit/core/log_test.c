/* Logging: the line builder's format (the access log is built without printf), and the
 * buffered writer: nothing lost when it stops, and a sink that does not take lines
 * makes it drop and count them instead of blocking the thread that logs. */
#define _GNU_SOURCE
#include "core/log.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

#include "core/metrics.h"
#include "test.h"

static int saved_stderr = -1;

/* stderr goes to a fresh pipe (its read end returned) until restore_stderr. */
static int capture_stderr(void)
{
    int p[2];
    fflush(stderr);
    if (saved_stderr < 0)
        saved_stderr = dup(STDERR_FILENO);
    if (pipe(p) != 0)
        abort();
    dup2(p[1], STDERR_FILENO);
    close(p[1]);
    return p[0];
}

static void restore_stderr(void)
{
    dup2(saved_stderr, STDERR_FILENO);
}

/* Everything readable from fd until EOF (every write end closed) into buf. */
static size_t read_all(int fd, char *buf, size_t cap)
{
    size_t n = 0;
    ssize_t r;
    while (n < cap - 1 && (r = read(fd, buf + n, cap - 1 - n)) > 0)
        n += (size_t)r;
    buf[n] = '\0';
    return n;
}

/* Occurrences of needle in s (by hand: strstr under ASan measures s every time). */
static size_t count_lines(const char *s, const char *needle)
{
    size_t n = 0, k = strlen(needle);
    for (; *s; s++) {
        if (*s == needle[0] && strncmp(s, needle, k) == 0)
            n++;
    }
    return n;
}

static void test_line_format(void)
{
    static char out[8192];
    int fd = capture_stderr();
    tms_log_line_t l;
    CHECK(tms_log_begin(&l, TMS_LOG_INFO, "request"));
    tms_log_add(&l, " path=", 6);
    tms_log_add_quoted(&l, "/a\"b\\c\x01\xff", 8, 255);
    tms_log_add(&l, " n=", 3);
    tms_log_add_int(&l, -1234567890123LL);
    tms_log_add(&l, " z=", 3);
    tms_log_add_int(&l, 0);
    tms_log_add(&l, " dur_ms=", 8);
    tms_log_add_ms(&l, 12345678); /* 12.345678 ms */
    tms_log_add(&l, " d2=", 4);
    tms_log_add_ms(&l, 999); /* rounds to 0.001 */
    tms_log_add(&l, " d3=", 4);
    tms_log_add_ms(&l, 0);
    tms_log_end(&l);
    tms_log_set_level(TMS_LOG_WARN);
    CHECK(!tms_log_begin(&l, TMS_LOG_INFO, "hidden"));
    tms_log_info("hidden", "x=%d", 1);
    tms_log_set_level(TMS_LOG_INFO);
    tms_log_warn("printf", "a=%s b=%d", "x", 7);
    restore_stderr();
    read_all(fd, out, sizeof(out));
    close(fd);
    /* ts=YYYY-MM-DDTHH:MM:SS.mmmZ */
    CHECK(strncmp(out, "ts=", 3) == 0);
    CHECK(out[7] == '-' && out[10] == '-' && out[13] == 'T' && out[16] == ':' && out[19] == ':' &&
          out[22] == '.' && out[26] == 'Z');
    CHECK(strstr(out, "Z level=info event=request path=\"/a\\\"b\\\\c\\x01\\xff\" "
                      "n=-1234567890123 z=0 dur_ms=12.346 d2=0.001 d3=0.000\n") != NULL);
    CHECK(strstr(out, "hidden") == NULL);
    CHECK(strstr(out, "level=warn event=printf a=x b=7\n") != NULL);
    {
        /* The same date as strftime would write. */
        char want[32];
        struct tm tm;
        time_t t = time(NULL);
        gmtime_r(&t, &tm);
        strftime(want, sizeof(want), "ts=%Y-%m-%dT", &tm);
        CHECK(strncmp(out, want, strlen(want)) == 0);
    }
}

static void test_line_cut(void)
{
    static char out[8192], big[5000];
    int fd = capture_stderr();
    tms_log_line_t l;
    char q[8];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    CHECK(tms_log_begin(&l, TMS_LOG_INFO, "long"));
    tms_log_add_str(&l, big);
    tms_log_add_quoted(&l, "more", 4, 100);
    tms_log_end(&l);
    tms_log_info("long2", "v=%s", big);
    restore_stderr();
    read_all(fd, out, sizeof(out));
    close(fd);
    CHECK_EQ_INT(strchr(out, '\n') - out + 1, TMS_LOG_LINE_MAX);
    CHECK_EQ_INT(count_lines(out, "\n"), 2);
    CHECK_EQ_STR(tms_log_quote(q, sizeof(q), "abcdefgh", 8), "\"ab\"");
}

typedef struct reader {
    int fd;
    char *buf;
    size_t cap, n;
} reader_t;

static void *read_until_eof(void *arg)
{
    reader_t *r = arg;
    r->n = read_all(r->fd, r->buf, r->cap);
    return NULL;
}

/* Lines written while the writer runs all come out, in order, by the time it stops. */
static void test_writer_loses_nothing(void)
{
    static char out[4 << 20];
    reader_t r = {capture_stderr(), out, sizeof(out), 0};
    pthread_t t;
    char want[64];
    int ok = 1;
    const char *p = out;
    pthread_create(&t, NULL, read_until_eof, &r);
    CHECK_EQ_INT(tms_log_start_writer(), 0);
    CHECK_EQ_INT(tms_log_start_writer(), 0); /* idempotent */
    for (int i = 0; i < 20000; i++)
        tms_log_info("line", "i=%d", i);
    tms_log_stop_writer();
    tms_log_info("after", "unbuffered=1");
    restore_stderr(); /* closes the pipe's last write end: the reader sees EOF */
    pthread_join(t, NULL);
    close(r.fd);
    CHECK_EQ_INT(count_lines(out, "\n"), 20001);
    /* In order: the i= of the k-th line is k (memchr: strstr under ASan is slow). */
    for (int i = 0; i < 20000 && ok; i++) {
        const char *nl = memchr(p, '\n', (size_t)(out + r.n - p));
        snprintf(want, sizeof(want), " event=line i=%d", i);
        ok = nl && (size_t)(nl - p) > strlen(want) &&
             memcmp(nl - strlen(want), want, strlen(want)) == 0;
        p = nl ? nl + 1 : p;
    }
    CHECK(ok);
    CHECK(strstr(out, "event=after unbuffered=1\n") != NULL);
    CHECK_EQ_INT(tms_log_dropped(), 0);
}

/* A loop thread's staged lines (issue 19): flushed once per "iteration" here, and the
 * rest by tms_log_stage_stop; every line comes out once, in this thread's order, with
 * a line of another (unstaged) thread among them. */
static void *log_other(void *arg)
{
    (void)arg;
    tms_log_info("other", "thread=2");
    return NULL;
}

static void test_staged_lines_lose_nothing(void)
{
    static char out[4 << 20];
    reader_t r = {capture_stderr(), out, sizeof(out), 0};
    pthread_t t, other;
    char want[64];
    int ok = 1;
    const char *p = out;
    pthread_create(&t, NULL, read_until_eof, &r);
    CHECK_EQ_INT(tms_log_start_writer(), 0);
    tms_log_stage_start();
    for (int i = 0; i < 20000; i++) {
        tms_log_info("staged", "i=%d", i);
        if (i % 100 == 99)
            tms_log_stage_flush();
        if (i == 5000) {
            pthread_create(&other, NULL, log_other, NULL);
            pthread_join(other, NULL);
        }
    }
    tms_log_info("staged", "i=%d", 20000); /* left in the stage: stop flushes it */
    tms_log_stage_stop();
    tms_log_stop_writer();
    restore_stderr();
    pthread_join(t, NULL);
    close(r.fd);
    CHECK_EQ_INT(count_lines(out, "\n"), 20002);
    CHECK_EQ_INT(count_lines(out, "event=other thread=2\n"), 1);
    for (int i = 0; i <= 20000 && ok; i++) {
        const char *nl = memchr(p, '\n', (size_t)(out + r.n - p));
        if (nl && memmem(p, (size_t)(nl - p), "event=other", 11)) { /* skip it */
            p = nl + 1;
            nl = memchr(p, '\n', (size_t)(out + r.n - p));
        }
        snprintf(want, sizeof(want), " event=staged i=%d", i);
        ok = nl && (size_t)(nl - p) > strlen(want) &&
             memcmp(nl - strlen(want), want, strlen(want)) == 0;
        p = nl ? nl + 1 : p;
    }
    CHECK(ok);
    CHECK_EQ_INT(tms_log_dropped(), 0);
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* A sink that takes nothing (a pipe nobody reads): logging goes on without blocking,
 * and the lines that did not fit are dropped and counted, in tms_log_dropped and in
 * the tms_log_dropped_total counter of /metrics. */
static void test_writer_drops_when_the_sink_blocks(void)
{
    /* More than both buffers and the pipe (up to 1 MiB with pipe-max-size) hold,
     * however early the writer took its first buffer: at 4 MiB buffers, 6,000 lines
     * fitted when it took one nearly full, and nothing was dropped. */
    enum { LINE = 1060, TOTAL = (2 * TMS_LOG_BUFFER_BYTES + (1 << 20)) / LINE + 2000 };
    static char out[2 * TMS_LOG_BUFFER_BYTES + (2 << 20)], pad[1001];
    reader_t r = {capture_stderr(), out, sizeof(out), 0};
    pthread_t t;
    uint64_t t0, took, dropped, counted;
    memset(pad, 'p', sizeof(pad) - 1);
    CHECK_EQ_INT(tms_log_start_writer(), 0);
    t0 = now_ms();
    for (int i = 0; i < TOTAL; i++)
        tms_log_info("big", "i=%d pad=%s", i, pad);
    took = now_ms() - t0;
    dropped = tms_log_dropped();
    counted = tms_counter_value(tms_metrics_counter("tms_log_dropped_total", "", ""));
    pthread_create(&t, NULL, read_until_eof, &r); /* the sink unblocks */
    tms_log_stop_writer();
    restore_stderr(); /* before any CHECK: a failure's message must not wait on the pipe */
    pthread_join(t, NULL);
    close(r.fd);
    /* Generous: the point is that it returned at all while nothing was read. */
    CHECK(took < 30000);
    CHECK(dropped > 0);
    CHECK(dropped < (uint64_t)TOTAL);
    CHECK_EQ_INT(counted, dropped);
    /* What was not dropped came out whole. */
    CHECK_EQ_INT(count_lines(out, "event=big ") + dropped, TOTAL);
    CHECK_EQ_INT(count_lines(out, "\n"), count_lines(out, "event=big "));
}

int main(void)
{
    RUN_TEST(test_line_format);
    RUN_TEST(test_line_cut);
    RUN_TEST(test_writer_loses_nothing);
    RUN_TEST(test_staged_lines_lose_nothing);
    RUN_TEST(test_writer_drops_when_the_sink_blocks);
    TEST_EXIT();
}
