/* Private to src/io/store/pg/: the contract between the generic pool (pg.c) and the
 * ports it serves (tasks.c, outbox.c), and the blocking helpers used at start
 * (migrations.c). Everything here runs on the pool's loop thread unless its
 * comment says otherwise. */
#ifndef TMS_IO_PG_INTERNAL_H
#define TMS_IO_PG_INTERNAL_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>

#include "core/mailbox.h"
#include "core/status.h"
#include "io/store/pg/pg.h"
#include "io/store/store.h"

#define TMS_PG_MAX_PARAMS 16

/* One prepared statement: its name on every connection and its text. */
typedef struct tms_pg_stmt {
    const char *name;
    const char *sql;
} tms_pg_stmt_t;

/* One operation as one statement call (or two): what pg.c sends. values[] may point into the
 * op (it outlives the send) or into num[]/heap, which live until the op completes. */
typedef struct tms_pg_call {
    const char *stmt;
    int nparams;
    const char *values[TMS_PG_MAX_PARAMS];
    /* Optional: a statement sent first, in the same transaction (an error in either
     * rolls back both, with the rest of the op's group); its rows are dropped (a
     * lock). */
    const char *first_stmt;
    int first_nparams;
    const char *first_values[4];
    /* A single read statement (GET, LIST, the relay's fetch, ...): it may share one
     * sync with the reads sent next to it on its connection (one round of the server's
     * per-sync work), goes out at once, and is sent again alone if a neighbour's error
     * aborts it. Every other op is a write: it commits in a group of writes (pg.c). */
    bool read_only;
    /* A write that may touch many rows (unassigning a user's tasks, purging the push
     * log): sent alone, in a transaction of its own, so that it neither delays a group
     * of creates nor widens its locks. */
    bool solo;
    char num[8][32]; /* numbers, times */
    char *heap;      /* freed with the call */
} tms_pg_call_t;

/* What pg.c needs from a port's SQL (tasks.c, outbox.c). */
typedef struct tms_pg_port {
    const char *name;
    const tms_pg_stmt_t *stmts;
    size_t nstmts;
    /** Fill call for msg (op code in range, outputs reset); returns 0, or -1 with the
     * op's error set. */
    int (*prepare)(tms_msg_t *msg, tms_pg_call_t *call);
    /** Store the outcome of a successful statement (rows or command status). */
    void (*finish)(tms_msg_t *msg, const PGresult *res);
} tms_pg_port_t;

extern const tms_pg_port_t tms__pg_tasks_port;
extern const tms_pg_port_t tms__pg_outbox_port;

/** Format v into buf (for a call's num[] slot); returns buf. */
const char *tms__pg_i64(char *buf, size_t size, long long v);

/** Copy column c of row r into dst (truncated, "" for NULL). */
void tms__pg_str(char *dst, size_t cap, const PGresult *res, int r, int c);

/** Column c of row r as a heap string ("" for NULL). */
char *tms__pg_dup(const PGresult *res, int r, int c);

/** Column c of row r as an integer (0 for NULL). */
long long tms__pg_int(const PGresult *res, int r, int c);

/** Blocking: connect to url with a notice processor that logs nothing. NULL with err. */
PGconn *tms__pg_connect_sync(const char *url, char *err, size_t err_len);

/** Blocking: refuse synchronous_commit off unless accept_async. 0 or -TMS_EIO + err. */
int tms__pg_check_server(PGconn *c, bool accept_async, char *err, size_t err_len);

/** Blocking: apply pending migrations under an advisory lock, each in its own
 * transaction. 0 or -TMS_EIO with err (failed migration, schema newer than us). */
int tms__pg_apply_migrations(PGconn *c, char *err, size_t err_len);
/* Deletes the outbox rows earlier versions marked sent (migrations.c); only logs. */
void tms__pg_purge_sent(PGconn *c);

#endif
