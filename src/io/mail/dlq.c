/* Dead-letter files of the SMTP mailer (see dlq.h). Written on a worker thread;
 * listed and replayed by the CLI, which may run while the server does: a file only
 * appears complete (rename) and leaves by rename. */
#include "io/mail/dlq.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/alloc.h"

#define SUFFIX ".eml"
#define REASON_HDR "X-TMS-Dead-Letter-Reason: "
#define AT_HDR "X-TMS-Dead-Letter-At: "

static atomic_uint_fast64_t tmp_seq;

static int make_dirs(const char *path)
{
    char buf[PATH_MAX];
    struct stat st;
    if (snprintf(buf, sizeof(buf), "%s", path) >= (int)sizeof(buf)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *p = buf + 1;; p++) {
        bool end = *p == '\0';
        if (*p != '/' && !end)
            continue;
        *p = '\0';
        if (mkdir(buf, 0700) != 0 && errno != EEXIST)
            return -1;
        if (stat(buf, &st) != 0)
            return -1;
        if (!S_ISDIR(st.st_mode)) {
            errno = ENOTDIR;
            return -1;
        }
        if (end)
            return 0;
        *p = '/';
    }
}

int tms_mail_dlq_prepare(const char *dir)
{
    if (!dir || !*dir) {
        errno = EINVAL;
        return -1;
    }
    if (make_dirs(dir) != 0)
        return -1;
    return access(dir, W_OK | X_OK);
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC), rc;
    if (fd < 0)
        return -1;
    rc = fsync(fd);
    close(fd);
    return rc;
}

/* Event ids name files: letters, digits and '-' only (no '/', no ".."). */
static bool id_ok(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-'))
            return false;
    }
    return true;
}

int tms_mail_dlq_write(const char *dir, const char *event_id, const char *reason,
                       const char *message, size_t len)
{
    char path[PATH_MAX], tmp[PATH_MAX], head[512], at[32];
    size_t hn = 0;
    time_t now = time(NULL);
    struct tm tm;
    int fd, saved;
    if (!id_ok(event_id)) {
        errno = EINVAL;
        return -1;
    }
    snprintf(path, sizeof(path), "%s/%s" SUFFIX, dir, event_id);
    snprintf(tmp, sizeof(tmp), "%s/.%s.%ld.%llu.tmp", dir, event_id, (long)getpid(),
             (unsigned long long)atomic_fetch_add(&tmp_seq, 1));
    gmtime_r(&now, &tm);
    strftime(at, sizeof(at), "%Y-%m-%dT%H:%M:%SZ", &tm);
    /* The server's text becomes a header of ours: keep printable ASCII only. */
    hn = (size_t)snprintf(head, sizeof(head), REASON_HDR);
    for (const char *r = reason; *r && hn < 400; r++)
        head[hn++] = (*r >= 0x20 && *r < 0x7f) ? *r : ' ';
    hn += (size_t)snprintf(head + hn, sizeof(head) - hn, "\r\n" AT_HDR "%s\r\n", at);

    fd = open(tmp, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    if (write_all(fd, head, hn) != 0 || write_all(fd, message, len) != 0 || fsync(fd) != 0)
        goto fail;
    if (close(fd) != 0) {
        fd = -1;
        goto fail;
    }
    fd = -1;
    if (rename(tmp, path) != 0 || fsync_dir(dir) != 0)
        goto fail;
    return 0;
fail:
    saved = errno;
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    errno = saved;
    return -1;
}

/* ---- reading letters back (CLI) -------------------------------------------- */

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    long n;
    if (!f)
        return NULL;
    if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return NULL;
    }
    buf = tms_malloc((size_t)n + 1);
    if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        fclose(f);
        return NULL;
    }
    buf[n] = '\0';
    *len = (size_t)n;
    fclose(f);
    return buf;
}

/* Copies the value of header name (up to CRLF) from the header block of text. */
static void header_value(const char *text, const char *name, char *out, size_t size)
{
    size_t n = strlen(name);
    const char *p = text;
    out[0] = '\0';
    while (*p && !(p[0] == '\r' && p[1] == '\n')) {
        const char *eol = strstr(p, "\r\n");
        if (!eol)
            return;
        if (strncasecmp(p, name, n) == 0) {
            size_t vn = (size_t)(eol - p) - n;
            snprintf(out, size, "%.*s", (int)(vn < size ? vn : size - 1), p + n);
            return;
        }
        p = eol + 2;
    }
}

/* The message as it was to be sent: our two header lines dropped. */
static const char *original(const char *text)
{
    const char *p = text;
    while (strncmp(p, "X-TMS-Dead-Letter-", 18) == 0) {
        const char *eol = strstr(p, "\r\n");
        if (!eol)
            break;
        p = eol + 2;
    }
    return p;
}

typedef int (*letter_fn)(const char *dir, const char *id, const char *path, void *arg);

/* Calls fn for every letter (or the one of event_id); returns the sum of fn's results
 * or -1 when dir cannot be read. */
static int each_letter(const char *dir, const char *event_id, letter_fn fn, void *arg)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int total = 0;
    if (!d)
        return -1;
    while ((e = readdir(d)) != NULL) {
        char id[128], path[PATH_MAX];
        size_t n = strlen(e->d_name);
        if (e->d_name[0] == '.' || n <= strlen(SUFFIX) || n - strlen(SUFFIX) >= sizeof(id) ||
            strcmp(e->d_name + n - strlen(SUFFIX), SUFFIX) != 0)
            continue;
        snprintf(id, sizeof(id), "%.*s", (int)(n - strlen(SUFFIX)), e->d_name);
        if (event_id && strcmp(id, event_id) != 0)
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        total += fn(dir, id, path, arg);
    }
    closedir(d);
    return total;
}

static int list_one(const char *dir, const char *id, const char *path, void *arg)
{
    FILE *out = arg;
    size_t len;
    char *text = read_file(path, &len);
    char reason[512], at[64], to[320];
    if (!text)
        return 0; /* replayed meanwhile */
    header_value(text, REASON_HDR, reason, sizeof(reason));
    header_value(text, AT_HDR, at, sizeof(at));
    header_value(original(text), "To: ", to, sizeof(to));
    fprintf(out, "%s\t%s\t%s\t%s\n", id, at, to, reason);
    free(text);
    return 1;
}

int tms_mail_dlq_list(const char *dir, FILE *out)
{
    return each_letter(dir, NULL, list_one, out);
}

typedef struct replay {
    tms_mail_dlq_send_fn send;
    void *ctx;
    FILE *out;
    int found;
} replay_t;

static int replay_one(const char *dir, const char *id, const char *path, void *arg)
{
    replay_t *r = arg;
    size_t len;
    char *text = read_file(path, &len);
    char to[320], err[512], done_dir[PATH_MAX], dst[PATH_MAX];
    const char *msg;
    long code = 0;
    r->found++;
    if (!text) {
        fprintf(r->out, "failed\t%s\tcannot read %s: %s\n", id, path, strerror(errno));
        return 1;
    }
    msg = original(text);
    header_value(msg, "To: ", to, sizeof(to));
    if (r->send(r->ctx, to, msg, len - (size_t)(msg - text), &code, err, sizeof(err)) != 0) {
        fprintf(r->out, "failed\t%s\t%ld %s\n", id, code, err);
        free(text);
        return 1;
    }
    free(text);
    snprintf(done_dir, sizeof(done_dir), "%s/replayed", dir);
    snprintf(dst, sizeof(dst), "%.3900s/%.100s" SUFFIX, done_dir, id);
    if (make_dirs(done_dir) != 0 || rename(path, dst) != 0) {
        fprintf(r->out, "sent\t%s\tbut not moved to %s: %s\n", id, done_dir, strerror(errno));
        return 1;
    }
    fprintf(r->out, "sent\t%s\n", id);
    return 0;
}

int tms_mail_dlq_replay(const char *dir, const char *event_id, tms_mail_dlq_send_fn send, void *ctx,
                        FILE *out)
{
    replay_t r = {send, ctx, out, 0};
    int failed = each_letter(dir, event_id, replay_one, &r);
    if (failed >= 0 && event_id && r.found == 0) {
        fprintf(out, "failed\t%s\tno such dead letter\n", event_id);
        return 1;
    }
    return failed;
}
