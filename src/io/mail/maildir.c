/* Maildir mailer. The loop never touches the file system: submit queues the mail and, if
 * no drain job is scheduled or running, schedules one on the workpool; that job renders
 * and writes the queued mails, and each mail's answer goes back to the submitter's loop,
 * where it copies the outcome into the mail and hands the mail itself to the mail's own
 * continuation, so the caller only ever sees its tms_mail_t.
 *
 * Delivery is idempotent per event: the file name is `<event_id>.tms`, the file is
 * written under a unique name in tmp/ and hard-linked into new/, where link() fails
 * with EEXIST if the event was delivered before (rename would silently replace it).
 * A reader that already moved the mail to cur/ is found by a scan of cur/ before the
 * write (O(files in cur/); fine for a local mailbox). A reader moving the file from
 * new/ to cur/ between that scan and the link can still cause a second copy; that
 * window is a few microseconds, and consumers are at-least-once anyway.
 *
 * Mails written together share the fsync of new/: the drain job takes the mails at the
 * head of the queue (MAX_BATCH at most) and writes them in submit order, each file
 * written and fsynced, then linked, then new/ fsynced once for all, and goes on until
 * the queue is empty. A mail is answered only after a fsync of new/ that began after
 * its link, or after the link it found there (a duplicate in new/ may be another
 * batch's, not yet synced). Under load that halves the fsyncs (issue 20: the mail
 * thread was 15 % of the server core in pg_post); the files are written one after the
 * other on one thread at a time, and a mail waits for its batch. At most queue_capacity
 * mails wait for a batch; a submit beyond that is refused (-TMS_EFULL). */
#include "io/mail/maildir.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/log.h"
#include "core/mail_format.h"
#include "core/metrics.h"
#include "core/queue.h"

/* Maildir convention: files left in tmp/ this long by a crash are garbage. */
#define STALE_TMP_SECONDS (36 * 3600)
/* Room left in a path buffer after the directory for "/new/<36>.tms.<pid>.<n>". */
#define NAME_ROOM 96
/* Mails written before their one fsync of new/. */
#define MAX_BATCH 64

typedef struct maildir {
    tms_mailer_t base;    /* first member */
    atomic_long inflight; /* mails submitted and not yet back */
    atomic_bool closing;
    bool released;
    uv_async_t async; /* unreferenced: closing and the last mail came back */
    tms_port_closed_fn closed_cb;
    void *closed_ctx;
    char *dir, *dir_new, *from, *domain;
    tms_workpool_t *pool;
    size_t capacity; /* mails queued at most */
    tms_counter_t *written, *duplicates, *syncs;
    tms_histogram_t *duration;
    atomic_uint_fast64_t tmp_seq;
    /* Mails submitted and not yet taken into a batch, in submit order, and whether a
     * drain job is scheduled or running (always, while the queue is not empty). */
    pthread_mutex_t lock;
    struct pending *queue_head, *queue_tail;
    size_t queued;
    bool draining;
} maildir_t;

/* A mail from submit to its answer, which is this message sent to the mail's
 * reply_to. */
typedef struct pending {
    tms_msg_t msg; /* first member */
    maildir_t *md;
    tms_mail_t *mail;
    tms_error_t err; /* filled on the worker, copied into the mail on the loop */
    int duplicate;
    struct pending *queued; /* next in md's queue, under md->lock */
} pending_t;

/* A mail came back (on the submitter's loop, or on a worker when its reply had
 * nowhere to go). Under md->lock, which on_async takes too: on a worker, the last mail
 * of a closing mailer must not free md (on the loop) between its count and its send. */
static void mail_done(maildir_t *md)
{
    pthread_mutex_lock(&md->lock);
    if (atomic_fetch_sub(&md->inflight, 1) == 1 && atomic_load(&md->closing))
        uv_async_send(&md->async);
    pthread_mutex_unlock(&md->lock);
}

/* ---- the write, on a worker thread ---------------------------------------- */

static bool event_id_ok(const char *id)
{
    if (strnlen(id, 37) != 36)
        return false;
    for (int i = 0; i < 36; i++) {
        if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f') || id[i] == '-'))
            return false;
    }
    return true;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* 1 when cur/ holds a file whose name starts with name (a reader adds ":2,FLAGS"), 0
 * when not, -1 with errno on error. */
static int in_cur(const char *cur, const char *name)
{
    size_t n = strlen(name);
    struct dirent *e;
    DIR *d = opendir(cur);
    int found = 0;
    if (!d)
        return -1;
    errno = 0;
    while ((e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, name, n) == 0) {
            found = 1;
            break;
        }
    }
    if (!found && errno != 0) {
        int saved = errno;
        closedir(d);
        errno = saved;
        return -1;
    }
    closedir(d);
    return found;
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
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rc;
    if (fd < 0)
        return -1;
    rc = fsync(fd);
    if (rc != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return close(fd);
}

/* What write_one did: the batch's fsync of new/ makes a LINKED mail durable, and a
 * duplicate FOUND_IN_NEW too (its entry may be another batch's, not yet synced). */
enum { WROTE_NOTHING, LINKED, FOUND_IN_NEW };

/* Renders, writes, fsyncs and links one mail. */
static int write_one(pending_t *w)
{
    maildir_t *md = w->md;
    const tms_mail_t *mail = w->mail;
    int out = WROTE_NOTHING;
    char name[64], tmp[PATH_MAX], dst[PATH_MAX], dir_cur[PATH_MAX];
    const char *op = "render";
    char *text = NULL;
    size_t len = 0;
    int fd = -1, rc;
    bool tmp_made = false;

    if (!event_id_ok(mail->event_id)) {
        tms_error_set(&w->err, TMS_INVALID_ARGUMENT, "bad event id");
        goto done;
    }
    text = tms_mail_render(mail, md->from, md->domain, &len);
    if (!text) {
        tms_error_set(&w->err, TMS_INVALID_ARGUMENT, "unsafe mail header");
        goto done;
    }
    snprintf(name, sizeof(name), "%s.tms", mail->event_id);
    snprintf(dir_cur, sizeof(dir_cur), "%s/cur", md->dir);
    snprintf(dst, sizeof(dst), "%s/%s", md->dir_new, name);
    snprintf(tmp, sizeof(tmp), "%s/tmp/%s.%ld.%llu", md->dir, name, (long)getpid(),
             (unsigned long long)atomic_fetch_add(&md->tmp_seq, 1));

    op = "stat";
    struct stat st;
    if (lstat(dst, &st) == 0) {
        out = FOUND_IN_NEW;
        goto duplicate;
    }
    if (errno != ENOENT)
        goto io_error;
    op = "scan_cur";
    rc = in_cur(dir_cur, name);
    if (rc < 0)
        goto io_error;
    if (rc > 0)
        goto duplicate;

    op = "open";
    fd = open(tmp, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0)
        goto io_error;
    tmp_made = true;
    op = "write";
    if (write_all(fd, text, len) != 0)
        goto io_error;
    op = "fsync";
    if (fsync(fd) != 0)
        goto io_error;
    op = "close";
    rc = close(fd);
    fd = -1;
    if (rc != 0)
        goto io_error;
    op = "link";
    if (link(tmp, dst) != 0) {
        if (errno == EEXIST) {
            out = FOUND_IN_NEW; /* a concurrent writer of the same event won */
            goto duplicate;
        }
        /* File systems without hard links: the existence check above stands in. */
        if (errno != EPERM && errno != ENOTSUP && errno != ENOSYS)
            goto io_error;
        op = "rename";
        if (rename(tmp, dst) != 0)
            goto io_error;
        tmp_made = false;
    }
    out = LINKED;
    goto done;

duplicate:
    w->duplicate = 1;
    tms_counter_add(md->duplicates, 1);
    goto done;

io_error : {
    int e = errno;
    tms_log_error("maildir_write_failed", "event_id=%s op=%s errno=%d error=\"%s\"", mail->event_id,
                  op, e, strerror(e));
    tms_error_set(&w->err, TMS_UNAVAILABLE, "maildir write failed");
}
done:
    if (fd >= 0)
        close(fd);
    if (tmp_made)
        unlink(tmp);
    free(text);
    return out;
}

/* Takes the mails at the head of the queue (MAX_BATCH at most) into batch; when there
 * are none, the drain ends (the next submit schedules another). Returns how many. */
static size_t take_batch(maildir_t *md, pending_t **batch)
{
    size_t n = 0;
    pthread_mutex_lock(&md->lock);
    while (md->queue_head && n < MAX_BATCH) {
        batch[n++] = md->queue_head;
        md->queue_head = md->queue_head->queued;
    }
    if (!md->queue_head)
        md->queue_tail = NULL;
    md->queued -= n;
    if (n == 0)
        md->draining = false;
    pthread_mutex_unlock(&md->lock);
    return n;
}

/* Writes a batch: each file fsynced and linked, then one fsync of new/ for all. */
static void write_batch(maildir_t *md, pending_t **batch, size_t n)
{
    int did[MAX_BATCH];
    double began[MAX_BATCH];
    bool sync = false;

    for (size_t i = 0; i < n; i++) {
        began[i] = now_seconds();
        did[i] = write_one(batch[i]);
        sync |= did[i] != WROTE_NOTHING;
    }
    if (sync) {
        tms_counter_add(md->syncs, 1);
        if (fsync_dir(md->dir_new) != 0) {
            int e = errno;
            tms_log_error("maildir_write_failed",
                          "op=fsync_dir mails=%zu first_event_id=%s errno=%d"
                          " error=\"%s\"",
                          n, batch[0]->mail->event_id, e, strerror(e));
            for (size_t i = 0; i < n; i++) {
                if (did[i] != WROTE_NOTHING)
                    tms_error_set(&batch[i]->err, TMS_UNAVAILABLE, "maildir write failed");
                did[i] = WROTE_NOTHING;
            }
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (did[i] == LINKED)
            tms_counter_add(md->written, 1);
        tms_histogram_observe(md->duration, now_seconds() - began[i]);
    }
}

/* The drain job: writes the queue out batch by batch until it is empty. */
static void run_drain(tms_job_t *job)
{
    maildir_t *md = job->msg.ctx;
    pending_t *a[MAX_BATCH], *b[MAX_BATCH], **batch = a, **next = b, **t;
    size_t n = take_batch(md, batch), m;
    while (n > 0) {
        write_batch(md, batch, n);
        /* The next batch is taken before this one is answered: once its last mail is
         * back, a closing md may be freed (the mails still queued keep it until then). */
        m = take_batch(md, next);
        for (size_t i = 0; i < n; i++)
            tms_mailbox_reply(&batch[i]->msg);
        t = batch;
        batch = next;
        next = t;
        n = m;
    }
}

static void free_drain_job(tms_msg_t *msg)
{
    free(msg);
}

/* ---- back on the submitter's loop ---------------------------------------- */

static void return_mail(tms_mail_t *mail)
{
    mail->msg.kind = TMS_MSG_REPLY;
    mail->msg.next = NULL;
    if (mail->msg.cont)
        mail->msg.cont(&mail->msg);
    else if (mail->msg.free_fn)
        mail->msg.free_fn(&mail->msg);
    else
        tms_mail_free(&mail);
}

/* The answer arrived in mail->msg.reply_to's mailbox, so this already runs where the
 * mail's continuation must: call it directly rather than queue a second hop. */
static void on_written(tms_msg_t *msg)
{
    pending_t *p = (pending_t *)msg;
    tms_mail_t *mail = p->mail;
    maildir_t *md = p->md;
    mail->err = p->err;
    mail->duplicate = p->duplicate;
    free(p);
    return_mail(mail);
    mail_done(md);
}

/* The answer could not be delivered (no reply_to, or it was freed): drop both. */
static void free_pending_msg(tms_msg_t *msg)
{
    pending_t *p = (pending_t *)msg;
    tms_mail_t *mail = p->mail;
    maildir_t *md = p->md;
    free(p);
    if (mail->msg.free_fn)
        mail->msg.free_fn(&mail->msg);
    else
        tms_mail_free(&mail);
    mail_done(md);
}

/* Under md->lock, with the queue empty and no drain job: schedules one, apart from md
 * since the pool frees it after run returns, when md may be gone. Returns 0, or the
 * pool's -TMS_EFULL or -TMS_ECLOSED. */
static int schedule_drain(maildir_t *md)
{
    tms_job_t *job = tms_new(tms_job_t);
    int rc;
    job->run = run_drain;
    job->msg.ctx = md;
    job->msg.free_fn = free_drain_job; /* no reply_to: the pool frees it when done */
    rc = tms_workpool_submit(md->pool, &job);
    if (rc != 0) {
        free(job);
        return rc;
    }
    md->draining = true;
    return 0;
}

static int submit(tms_mailer_t *self, tms_mail_t **mail)
{
    maildir_t *md = (maildir_t *)self;
    pending_t *p;
    int rc = 0;
    /* Counted before the closing check: either this sees closing, or close's drain
     * sees the mail in flight. */
    atomic_fetch_add(&md->inflight, 1);
    if (atomic_load(&md->closing)) {
        mail_done(md);
        return -TMS_ECLOSED;
    }
    p = tms_new(pending_t);
    p->md = md;
    p->mail = *mail;
    p->msg.reply_to = (*mail)->msg.reply_to;
    p->msg.cont = on_written;
    p->msg.ctx = p;
    p->msg.free_fn = free_pending_msg;
    pthread_mutex_lock(&md->lock);
    /* Full: fails at once, and the notifier keeps the event pending (as when each mail
     * was a job of its own and the pool's queue was full). */
    if (md->queued >= md->capacity)
        rc = -TMS_EFULL;
    else if (!md->draining)
        rc = schedule_drain(md); /* its run_drain waits for this lock: finds p queued */
    if (rc == 0) {
        TMS_FIFO_APPEND(md->queue_head, md->queue_tail, p, queued);
        md->queued++;
    }
    pthread_mutex_unlock(&md->lock);
    if (rc != 0) {
        free(p);
        mail_done(md);
        return rc; /* the caller keeps the mail */
    }
    *mail = NULL;
    return 0;
}

/* ---- setup ---------------------------------------------------------------- */

/* mkdir that accepts an existing directory. */
static int make_dir(const char *path)
{
    struct stat st;
    if (mkdir(path, 0700) == 0)
        return 0;
    if (errno != EEXIST)
        return -1;
    if (stat(path, &st) != 0)
        return -1;
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    return 0;
}

/* mkdir -p: the configured path's parents may not exist yet (data.dir/mail). */
static int make_dirs(const char *path)
{
    char buf[PATH_MAX];
    snprintf(buf, sizeof(buf), "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (make_dir(buf) != 0)
            return -1;
        *p = '/';
    }
    return make_dir(buf);
}

/* Files a crash left in tmp/ (Maildir: older than 36 hours). */
static void clean_tmp(const char *dir)
{
    char tmpdir[PATH_MAX], path[PATH_MAX + 256];
    struct dirent *e;
    struct stat st;
    time_t now = time(NULL);
    DIR *d;
    snprintf(tmpdir, sizeof(tmpdir), "%s/tmp", dir);
    d = opendir(tmpdir);
    if (!d)
        return;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "%s/%s", tmpdir, e->d_name);
        if (lstat(path, &st) == 0 && S_ISREG(st.st_mode) && now - st.st_mtime > STALE_TMP_SECONDS)
            unlink(path);
    }
    closedir(d);
}

static size_t busy(tms_mailer_t *self)
{
    return (size_t)atomic_load(&((maildir_t *)self)->inflight);
}

static void on_async_closed(uv_handle_t *h)
{
    maildir_t *md = h->data;
    tms_port_closed_fn cb = md->closed_cb;
    void *ctx = md->closed_ctx;
    pthread_mutex_destroy(&md->lock);
    free(md->dir);
    free(md->dir_new);
    free(md->from);
    free(md->domain);
    free(md);
    if (cb)
        cb(ctx);
}

static void on_async(uv_async_t *a)
{
    maildir_t *md = a->data;
    bool last;
    pthread_mutex_lock(&md->lock); /* a worker's mail_done is done with md */
    last = atomic_load(&md->closing) && !md->released && atomic_load(&md->inflight) == 0;
    pthread_mutex_unlock(&md->lock);
    if (!last)
        return;
    md->released = true;
    uv_close((uv_handle_t *)&md->async, on_async_closed);
}

static void mailer_close(tms_mailer_t *self, tms_port_closed_fn cb, void *ctx)
{
    maildir_t *md = (maildir_t *)self;
    md->closed_cb = cb;
    md->closed_ctx = ctx;
    atomic_store(&md->closing, true);
    /* Checked on the loop (cb never runs inside close), which the handle keeps alive
     * until the last mail came back. */
    uv_ref((uv_handle_t *)&md->async);
    uv_async_send(&md->async);
}

tms_mailer_t *tms_maildir_new(uv_loop_t *loop, const char *dir, const char *from,
                              const char *domain, tms_workpool_t *pool, size_t queue_capacity,
                              char *err, size_t err_len)
{
    static const char *const subdirs[] = {"tmp", "new", "cur"};
    char path[PATH_MAX];
    maildir_t *md;
    tms_mail_t probe = {0};
    char *text;
    if (!dir || !*dir || !from || !domain || !pool) {
        snprintf(err, err_len, "maildir: missing directory, from, domain or pool");
        return NULL;
    }
    if (strlen(dir) >= PATH_MAX - NAME_ROOM) {
        snprintf(err, err_len, "maildir: path too long");
        return NULL;
    }
    /* Checked once here so a bad setting stops start-up instead of every mail. */
    snprintf(probe.to, sizeof(probe.to), "%s", from);
    snprintf(probe.event_id, sizeof(probe.event_id), "00000000-0000-4000-8000-000000000000");
    text = tms_mail_render(&probe, from, domain, NULL);
    if (!text) {
        snprintf(err, err_len, "maildir: from address or domain not usable in a mail header");
        return NULL;
    }
    free(text);
    if (make_dirs(dir) != 0) {
        snprintf(err, err_len, "maildir %s: %s", dir, strerror(errno));
        return NULL;
    }
    for (size_t i = 0; i < sizeof(subdirs) / sizeof(subdirs[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, subdirs[i]);
        if (make_dir(path) != 0 || access(path, W_OK | X_OK) != 0) {
            snprintf(err, err_len, "maildir %s: %s", path, strerror(errno));
            return NULL;
        }
    }
    clean_tmp(dir);

    md = tms_new(maildir_t);
    md->base.name = "maildir";
    md->base.submit = submit;
    md->base.busy = busy;
    md->base.close = mailer_close;
    if (uv_async_init(loop, &md->async, on_async) != 0)
        tms_oom(__FILE__, __LINE__);
    md->async.data = md;
    uv_unref((uv_handle_t *)&md->async);
    atomic_init(&md->tmp_seq, 0);
    pthread_mutex_init(&md->lock, NULL);
    md->dir = tms_strdup(dir);
    snprintf(path, sizeof(path), "%s/new", dir);
    md->dir_new = tms_strdup(path);
    md->from = tms_strdup(from);
    md->domain = tms_strdup(domain);
    md->pool = pool;
    md->capacity = queue_capacity ? queue_capacity : 1;
    md->written = tms_metrics_counter("tms_mail_written_total", "Mails written to the Maildir", "");
    md->duplicates = tms_metrics_counter("tms_mail_duplicates_total",
                                         "Mails not written because their event was delivered", "");
    md->syncs = tms_metrics_counter(
        "tms_mail_syncs_total",
        "fsyncs of the Maildir's new/ (one per batch of mails; failed ones too)", "");
    md->duration = tms_metrics_histogram(
        "tms_mail_write_duration_seconds",
        "Time to render, write and sync one Maildir mail (to its batch's fsync of new/)", "");
    return &md->base;
}
