/* `tms migrate`, `tms user set-role` and `tms mail dlq`: one-shot commands that work
 * beside a live server (WAL lets both reach one SQLite file; dead letters are files). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/mail/dlq.h"
#include "server/admin.h"
#include "server/internal.h"

int tms_admin_migrate(const tms_config_t *cfg)
{
    char err[512];
    if (server_make_dir(cfg->data.dir) != 0) {
        fprintf(stderr, "tms: data.dir: cannot create %s\n", cfg->data.dir);
        return 1;
    }
    if (server_migrate_stores(cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "tms: migrate: %s\n", err);
        return 1;
    }
    return 0;
}

static void on_role_set(tms_msg_t *msg)
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

/* One SET_ROLE through the store's own thread on a private loop. */
int tms_admin_set_role(const tms_config_t *cfg, const char *email, const char *role)
{
    uv_loop_t loop;
    tms_mailbox_t *replies;
    tms_user_op_t *op, *done = NULL;
    tms_user_store_t *store;
    bool closed = false;
    int rc = 1;

    if (strcmp(role, "admin") != 0 && strcmp(role, "user") != 0) {
        fprintf(stderr, "tms: role must be 'admin' or 'user'\n");
        return 2;
    }
    if (server_make_dir(cfg->data.dir) != 0) {
        fprintf(stderr, "tms: data.dir: cannot create %s\n", cfg->data.dir);
        return 1;
    }
    uv_loop_init(&loop);
    if (!(store = open_user_store(&loop, cfg)))
        goto out;
    replies = tms_mailbox_new(&loop, "cli", 1, NULL, NULL);
    op = calloc(1, sizeof(*op));
    if (!op)
        abort();
    op->msg.op = TMS_USER_SET_ROLE;
    op->msg.reply_to = replies;
    op->msg.cont = on_role_set;
    op->msg.ctx = &done;
    op->msg.free_fn = free_op;
    snprintf(op->key, sizeof(op->key), "%s", email);
    snprintf(op->user.role, sizeof(op->user.role), "%s", role);
    if (tms_user_store_submit(store, &op) != 0) {
        free(op);
        fprintf(stderr, "tms: user store refused the request\n");
    } else {
        while (!done)
            uv_run(&loop, UV_RUN_ONCE);
        if (done->err.code == TMS_OK) {
            printf("%s is now %s\n", done->user.email, done->user.role);
            rc = 0;
        } else if (done->err.code == TMS_NOT_FOUND) {
            fprintf(stderr, "tms: no user with email %s\n", email);
        } else {
            fprintf(stderr, "tms: %s\n", done->err.message);
        }
        free(done);
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

int tms_admin_dlq_list(const tms_config_t *cfg)
{
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
    n = tms_mail_dlq_replay(cfg->mail.dlq_dir, event_id, dlq_send_smtp, &opt, stdout);
    if (n < 0) {
        fprintf(stderr, "tms: mail.dlq_dir %s: %s\n", cfg->mail.dlq_dir, strerror(errno));
        return 1;
    }
    return n == 0 ? 0 : 1;
}
