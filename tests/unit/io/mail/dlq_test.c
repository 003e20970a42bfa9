/* Dead-letter files: durable write, reason sanitised into one header line, one file
 * per event however often it is written, unsafe event ids refused, listing, and
 * replay through the sender it is given. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/mail/dlq.h"
#include "test.h"

#define ID "0b9f6d2e-1c3a-4f5b-8e7d-6a5b4c3d2e1f"
#define MSG "From: a@tms.local\r\nTo: bob@example.com\r\nSubject: x\r\n\r\nbody\r\n"

static char dir[256];

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    static char buf[4096];
    size_t n;
    if (!f)
        return NULL;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static int count_files(const char *d)
{
    char cmd[512];
    FILE *p;
    int n = -1;
    snprintf(cmd, sizeof(cmd), "ls -A %s | wc -l", d);
    p = popen(cmd, "r");
    if (p && fscanf(p, "%d", &n) != 1)
        n = -1;
    if (p)
        pclose(p);
    return n;
}

static void test_write_and_rewrite(void)
{
    char path[512], *text;
    CHECK_EQ_INT(tms_mail_dlq_prepare(dir), 0);
    CHECK_EQ_INT(tms_mail_dlq_write(dir, ID, "550 no\r\nBcc: evil@x", MSG, strlen(MSG)), 0);
    snprintf(path, sizeof(path), "%s/%s.eml", dir, ID);
    text = slurp(path);
    CHECK(text != NULL);
    if (!text)
        return;
    /* The server's CR LF became spaces: still one header line of ours. */
    const char *want = "X-TMS-Dead-Letter-Reason: 550 no  Bcc: evil@x\r\n";
    CHECK(strncmp(text, want, strlen(want)) == 0);
    CHECK(strstr(text, "\r\nX-TMS-Dead-Letter-At: ") != NULL);
    CHECK(strstr(text, MSG) != NULL);
    CHECK_EQ_INT(tms_mail_dlq_write(dir, ID, "550 again", MSG, strlen(MSG)), 0);
    CHECK_EQ_INT(count_files(dir), 1); /* replaced, and no tmp file left */
    CHECK(strstr(slurp(path), "550 again") != NULL);
}

static void test_unsafe_ids_refused(void)
{
    errno = 0;
    CHECK_EQ_INT(tms_mail_dlq_write(dir, "../escape", "550", MSG, strlen(MSG)), -1);
    CHECK_EQ_INT(errno, EINVAL);
    CHECK_EQ_INT(tms_mail_dlq_write(dir, "", "550", MSG, strlen(MSG)), -1);
    CHECK_EQ_INT(count_files(dir), 1);
}

static void test_list(void)
{
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    CHECK_EQ_INT(tms_mail_dlq_list(dir, f), 1);
    fclose(f);
    CHECK(strncmp(out, ID "\t", 37) == 0);
    CHECK(strstr(out, "\tbob@example.com\t550 again\n") != NULL);
    free(out);
    CHECK_EQ_INT(tms_mail_dlq_list("/nonexistent/tms-dlq", stdout), -1);
}

/* The sender replay is given: records what it was asked to send, fails while fail is
 * set. */
typedef struct fake_send {
    int fail, calls;
    char to[64], data[256];
} fake_send_t;

static int fake_send(void *ctx, const char *to, const char *data, size_t len, long *code, char *err,
                     size_t err_len)
{
    fake_send_t *f = ctx;
    f->calls++;
    snprintf(f->to, sizeof(f->to), "%s", to);
    snprintf(f->data, sizeof(f->data), "%.*s", (int)len, data);
    if (f->fail) {
        *code = 451;
        snprintf(err, err_len, "try later");
        return -1;
    }
    *code = 250;
    return 0;
}

static void test_replay(void)
{
    fake_send_t f = {.fail = 1};
    char *out = NULL, path[512];
    size_t len = 0;
    FILE *o = open_memstream(&out, &len);
    /* A failed send keeps the letter where it was. */
    CHECK_EQ_INT(tms_mail_dlq_replay(dir, ID, fake_send, &f, o), 1);
    CHECK_EQ_INT(tms_mail_dlq_replay(dir, "no-such-event", fake_send, &f, o), 1);
    f.fail = 0;
    /* The message as it was to be sent (our header lines dropped), to its recipient;
     * the letter moves to replayed/. */
    CHECK_EQ_INT(tms_mail_dlq_replay(dir, NULL, fake_send, &f, o), 0);
    fclose(o);
    CHECK_EQ_INT(f.calls, 2);
    CHECK_EQ_STR(f.to, "bob@example.com");
    CHECK_EQ_STR(f.data, MSG);
    CHECK(strstr(out, "failed\t" ID "\t451 try later\n") != NULL);
    CHECK(strstr(out, "failed\tno-such-event\tno such dead letter\n") != NULL);
    CHECK(strstr(out, "sent\t" ID "\n") != NULL);
    free(out);
    snprintf(path, sizeof(path), "%s/replayed/%s.eml", dir, ID);
    CHECK(access(path, F_OK) == 0);
    CHECK_EQ_INT(tms_mail_dlq_list(dir, stdout), 0);
}

int main(void)
{
    char cmd[300];
    snprintf(dir, sizeof(dir), "/tmp/tms_dlq_testXXXXXX");
    if (!mkdtemp(dir))
        return 1;
    strcat(dir, "/dlq"); /* prepare creates it */
    RUN_TEST(test_write_and_rewrite);
    RUN_TEST(test_unsafe_ids_refused);
    RUN_TEST(test_list);
    RUN_TEST(test_replay);
    *strrchr(dir, '/') = '\0';
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0)
        return 1;
    TEST_EXIT();
}
