/* `tms migrate`, `tms user set-role`, `tms user create` and `tms mail dlq`: one-shot
 * commands that work beside a live server (WAL lets both reach one SQLite file; dead
 * letters are files). */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "core/clock.h"
#include "core/objectid.h"
#include "core/password.h"
#include "core/text.h"
#include "io/mail/dlq.h"
#include "server/admin.h"
#include "server/internal.h"

/* Says where a relative path of the settings points, for the messages below. */
static void where(const char *path, char *out, size_t size)
{
    char cwd[PATH_MAX];
    if (path[0] != '/' && getcwd(cwd, sizeof(cwd)))
        snprintf(out, size, " (relative to the current directory, %s)", cwd);
    else
        out[0] = '\0';
}

/* 0 when url is no SQLite URL or its file exists; else one line naming key and the
 * file, and -1. */
static int sqlite_exists(const tms_config_t *cfg, const char *key, const char *url)
{
    char rel[PATH_MAX + 64];
    const char *path;
    struct stat st;
    if (strncmp(url, "sqlite://", 9) != 0)
        return 0;
    path = server_sqlite_path(url);
    if (stat(path, &st) == 0)
        return 0;
    where(path, rel, sizeof(rel));
    fprintf(stderr,
            "tms: %s: no database at %s%s; give the server's settings (--config FILE or --set "
            "data.dir=DIR, as for tms serve; data.dir is %s), or make a new one with `tms "
            "migrate --create`\n",
            key, path, rel, cfg->data.dir);
    return -1;
}

int tms_admin_migrate(const tms_config_t *cfg, bool create)
{
    char err[512];
    if (!create && (sqlite_exists(cfg, "tasks.url", cfg->tasks.url) != 0 ||
                    sqlite_exists(cfg, "users.url", cfg->users.url) != 0))
        return 1;
    if (server_make_dir(cfg->data.dir) != 0) {
        fprintf(stderr, "tms: data.dir: cannot create %s: %s\n", cfg->data.dir, strerror(errno));
        return 1;
    }
    if (server_migrate_stores(cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "tms: migrate: %s\n", err);
        return 1;
    }
    return 0;
}

static void on_user_op_done(tms_msg_t *msg)
{
    *(tms_user_op_t **)msg->ctx = (tms_user_op_t *)msg;
}

static void free_op(tms_msg_t *msg)
{
    free(msg);
}

static void on_store_closed(void *arg)
{
    *(bool *)arg = true;
}

/* users.url's store port on loop, its backend opened for this command alone (it
 * goes with the port). NULL after one line on stderr. */
static tms_user_store_t *open_user_store(uv_loop_t *loop, const tms_config_t *cfg)
{
    tms_mongo_t *mongo;
    tms_sqlite_t *db;
    if (tms_mongo_url(cfg->users.url))
        return (mongo = server_open_mongo(loop, cfg)) ? tms_mongo_user_store(mongo) : NULL;
    db = server_open_sqlite(loop, "users.url", cfg->users.url, 4);
    return db ? tms_sqlite_user_store(db) : NULL;
}

/* One operation through the store's own thread on a private loop: the op comes back
 * in *done (the caller frees it), or 1 after one line on stderr. */
static int run_user_op(const tms_config_t *cfg, tms_user_op_t *op, tms_user_op_t **done)
{
    uv_loop_t loop;
    tms_mailbox_t *replies;
    tms_user_store_t *store;
    bool closed = false;
    int rc = 1;

    *done = NULL;
    if (sqlite_exists(cfg, "users.url", cfg->users.url) != 0) {
        free(op);
        return 1;
    }
    uv_loop_init(&loop);
    if (!(store = open_user_store(&loop, cfg))) {
        free(op);
        goto out;
    }
    replies = tms_mailbox_new(&loop, "cli", 1, NULL, NULL);
    op->msg.reply_to = replies;
    op->msg.cont = on_user_op_done;
    op->msg.ctx = done;
    op->msg.free_fn = free_op;
    if (tms_user_store_submit(store, &op) != 0) {
        free(op);
        fprintf(stderr, "tms: user store refused the request\n");
    } else {
        while (!*done)
            uv_run(&loop, UV_RUN_ONCE);
        rc = 0;
    }
    tms_mailbox_free(&replies);
    store->close(store, on_store_closed, &closed); /* the store goes with its port */
    while (!closed)
        uv_run(&loop, UV_RUN_ONCE);
out:
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return rc;
}

static tms_user_op_t *new_user_op(tms_user_op_kind_t kind)
{
    tms_user_op_t *op = calloc(1, sizeof(*op));
    if (!op)
        abort();
    op->msg.op = kind;
    return op;
}

int tms_admin_set_role(const tms_config_t *cfg, const char *email, const char *role)
{
    tms_user_op_t *op, *done;
    int rc;

    if (strcmp(role, "admin") != 0 && strcmp(role, "user") != 0) {
        fprintf(stderr, "tms: role must be 'admin' or 'user'\n");
        return 2;
    }
    op = new_user_op(TMS_USER_SET_ROLE);
    snprintf(op->key, sizeof(op->key), "%s", email);
    snprintf(op->user.role, sizeof(op->user.role), "%s", role);
    if (run_user_op(cfg, op, &done) != 0)
        return 1;
    rc = 1;
    if (done->err.code == TMS_OK) {
        printf("%s is now %s\n", done->user.email, done->user.role);
        rc = 0;
    } else if (done->err.code == TMS_NOT_FOUND) {
        fprintf(stderr, "tms: no user with email %s\n", email);
    } else {
        fprintf(stderr, "tms: %s\n", done->err.message);
    }
    free(done);
    return rc;
}

int tms_admin_user_create(const tms_config_t *cfg, const char *email, const char *role,
                          const char *password)
{
    tms_user_op_t *op, *done;
    const char *why;
    char hash[TMS_PASSWORD_HASH_SIZE];
    size_t plen = strlen(password);
    int rc;

    if (strcmp(role, "admin") != 0 && strcmp(role, "user") != 0) {
        fprintf(stderr, "tms: role must be 'admin' or 'user'\n");
        return 2;
    }
    if (plen < TMS_PASSWORD_MIN || plen > TMS_PASSWORD_MAX) {
        fprintf(stderr, "tms: user create: the password must be %d to %d bytes\n", TMS_PASSWORD_MIN,
                TMS_PASSWORD_MAX);
        return 2;
    }
    op = new_user_op(TMS_USER_CREATE);
    snprintf(op->user.email, sizeof(op->user.email), "%s", email);
    if (tms_email_normalize(op->user.email, &why) != 0) {
        fprintf(stderr, "tms: user create: %s\n", why);
        free(op);
        return 2;
    }
    if (tms_password_hash(password, plen, (unsigned long long)cfg->auth.argon2_opslimit,
                          (size_t)cfg->auth.argon2_memlimit_kib * 1024, hash, sizeof(hash)) != 0) {
        fprintf(stderr, "tms: user create: password hashing failed\n");
        free(op);
        return 1;
    }
    tms_objectid_new(op->user.id);
    snprintf(op->user.role, sizeof(op->user.role), "%s", role);
    snprintf(op->user.password_hash, sizeof(op->user.password_hash), "%s", hash);
    sodium_memzero(hash, sizeof(hash));
    op->user.created_at_ms = tms_now_ms();
    if (run_user_op(cfg, op, &done) != 0)
        return 1;
    rc = 1;
    if (done->err.code == TMS_OK) {
        printf("created %s (%s) id %s\n", done->user.email, done->user.role, done->user.id);
        rc = 0;
    } else if (done->err.code == TMS_ALREADY_EXISTS) {
        fprintf(stderr, "tms: user create: %s is already registered\n", done->user.email);
    } else {
        fprintf(stderr, "tms: %s\n", done->err.message);
    }
    sodium_memzero(done, sizeof(*done));
    free(done);
    return rc;
}

/* No data.dir at all: most likely the wrong directory (the dead letters' default place
 * is inside it). -1 after one line. */
static int data_dir_exists(const tms_config_t *cfg)
{
    char rel[PATH_MAX + 64];
    struct stat st;
    if (stat(cfg->data.dir, &st) == 0 || stat(cfg->mail.dlq_dir, &st) == 0)
        return 0;
    where(cfg->data.dir, rel, sizeof(rel));
    fprintf(stderr,
            "tms: data.dir: %s does not exist%s; give the server's settings (--config FILE or "
            "--set data.dir=DIR, as for tms serve)\n",
            cfg->data.dir, rel);
    return -1;
}

int tms_admin_dlq_list(const tms_config_t *cfg)
{
    if (data_dir_exists(cfg) != 0)
        return 1;
    if (tms_mail_dlq_list(cfg->mail.dlq_dir, stdout) < 0) {
        if (errno == ENOENT)
            return 0; /* nothing was ever dead-lettered */
        fprintf(stderr, "tms: mail.dlq_dir %s: %s\n", cfg->mail.dlq_dir, strerror(errno));
        return 1;
    }
    return 0;
}

/* Dead letters are replayed through SMTP (io/mail/dlq.h takes the sender). */
static int dlq_send_smtp(void *opt, const char *to, const char *data, size_t len, long *code,
                         char *err, size_t err_len)
{
    return tms_smtp_send_blocking(opt, to, data, len, code, err, err_len);
}

int tms_admin_dlq_replay(const tms_config_t *cfg, const char *event_id)
{
    tms_smtp_options_t opt = server_smtp_options(cfg);
    int n;
    if (!server_smtp_url(cfg->mail.url)) {
        fprintf(stderr, "tms: mail.url: replay needs smtp:// or smtps://\n");
        return 2;
    }
    if (data_dir_exists(cfg) != 0)
        return 1;
    n = tms_mail_dlq_replay(cfg->mail.dlq_dir, event_id, dlq_send_smtp, &opt, stdout);
    if (n < 0) {
        fprintf(stderr, "tms: mail.dlq_dir %s: %s\n", cfg->mail.dlq_dir, strerror(errno));
        return 1;
    }
    return n == 0 ? 0 : 1;
}
