/* The user store port: what the auth actor needs from wherever users live (SQLite
 * or MongoDB). Operations are messages: the actor fills a tms_user_op_t,
 * submits it, and gets the same op back as a reply in its mailbox (msg.cont runs
 * on the actor's loop) with `err` set. The adapter never calls back on its own
 * thread. */
#ifndef TMS_CORE_USER_STORE_H
#define TMS_CORE_USER_STORE_H

#include <stdint.h>
#include <uv.h>

#include "core/mailbox.h"
#include "core/port.h"
#include "core/status.h"

#define TMS_USER_ID_LEN 24 /* hex of a 12-byte ObjectId */
#define TMS_EMAIL_MAX 254
#define TMS_EMAIL_MIN 3
#define TMS_PASSWORD_MIN 8   /* bytes */
#define TMS_PASSWORD_MAX 256 /* bytes */
#define TMS_HASH_MAX 255

typedef struct tms_user {
    char id[TMS_USER_ID_LEN + 1];
    char email[TMS_EMAIL_MAX + 1];
    char role[8];                         /* "user" | "admin" */
    char password_hash[TMS_HASH_MAX + 1]; /* argon2id ($argon2id$...) or bcrypt ($2b$...) */
    int64_t token_version;
    int64_t created_at_ms; /* Unix epoch milliseconds */
} tms_user_t;

/* Operation codes, carried in op->msg.op. */
typedef enum tms_user_op_kind {
    TMS_USER_CREATE = 1,   /* in: user (all fields). err ALREADY_EXISTS if email taken */
    TMS_USER_GET_BY_EMAIL, /* in: key = email. out: user, or err NOT_FOUND */
    TMS_USER_GET_BY_ID,    /* in: key = id. out: user, or err NOT_FOUND */
    TMS_USER_BUMP_VERSION, /* in: key = id; new_hash if non-empty replaces the password
                            * hash in the same write. Atomic increment of
                            * token_version. out: user after the change, or NOT_FOUND */
    TMS_USER_SET_ROLE,     /* in: key = email, user.role. out: user, or NOT_FOUND */
    TMS_USER_DELETE,       /* in: key = id. out: user as it was, or NOT_FOUND */
    TMS_USER_RESTORE,      /* in: user.id, and user.email and user.role as the caller
                            * believes them (an event's). Re-inserts the user as the
                            * tombstone that DELETE wrote keeps it (email, role, hash,
                            * created_at; token_version one past the deleted one), never
                            * from the input. out: user as restored. err NOT_FOUND
                            * without a tombstone; FAILED_PRECONDITION when the input's
                            * email or role differs from the tombstone's (or it keeps
                            * neither: written before they were kept); ALREADY_EXISTS if
                            * the id or email is taken */
    TMS_USER_PING,         /* readiness probe: err OK when the store answers */
} tms_user_op_kind_t;

typedef struct tms_user_op {
    tms_msg_t msg; /* first member; msg.op is a tms_user_op_kind_t */
    char key[TMS_EMAIL_MAX + 1];
    char new_hash[TMS_HASH_MAX + 1];
    tms_user_t user;
    tms_error_t err; /* set by the store: OK, NOT_FOUND, ALREADY_EXISTS, UNAVAILABLE,
                        INTERNAL */
} tms_user_op_t;

/* A reader that answers TMS_USER_GET_BY_ID on the calling thread, without a queue or a
 * thread hop, when the backend can do so without waiting on I/O (SQLite: a read-only
 * connection of the loop, as the task store's reader in core/task_store.h). It sees
 * every write whose reply was delivered before the read starts. One thread uses it:
 * the one running the loop it was opened on; close it there, and run that loop once
 * more (it may close a handle). */
typedef struct tms_user_reader tms_user_reader_t;
struct tms_user_reader {
    /** Run a TMS_USER_GET_BY_ID op now and fill its outputs (err, user) as its reply
     * would: 0. Or -TMS_EAGAIN when it cannot be answered now without waiting (the
     * database busy): the op is untouched, submit it instead. */
    int (*read)(tms_user_reader_t *self, tms_user_op_t *op);
    /** Close and free (on the thread that opened it). */
    void (*close)(tms_user_reader_t *self);
};

typedef struct tms_user_store tms_user_store_t;
struct tms_user_store {
    const char *name; /* "sqlite", "mongodb": for logs only, never to dispatch on */
    /** Queue op; on success takes ownership (clears *op) and later replies to
     * (*op)->msg.reply_to. Returns 0, -TMS_EFULL (store busy) or -TMS_ECLOSED. */
    int (*submit)(tms_user_store_t *self, tms_user_op_t **op);
    /** Operations accepted and not yet answered (core/port.h). */
    size_t (*busy)(tms_user_store_t *self);
    /** Refuse new ops, answer those accepted, then cb(ctx) on the store's loop
     * (core/port.h); self is invalid when cb runs. */
    void (*close)(tms_user_store_t *self, tms_port_closed_fn cb, void *ctx);
    /** Optional (NULL: the backend has none): a reader for the calling thread, or NULL
     * when it cannot open one (the caller then submits every op). The reader may
     * outlive the port. */
    tms_user_reader_t *(*reader_open)(tms_user_store_t *self, uv_loop_t *loop);
};

/** Convenience: submit through the port. */
static inline int tms_user_store_submit(tms_user_store_t *s, tms_user_op_t **op)
{
    return s->submit(s, op);
}

#endif
