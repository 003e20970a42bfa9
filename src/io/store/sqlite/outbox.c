/* The outbox and inbox port on SQLite: pending events in seq order for the relay,
 * removing them once sent, standalone events (saga compensation), and the consumers'
 * handled-event log. Runs on the db owner thread. */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "io/store/sqlite/internal.h"

enum { NOPS = TMS_INBOX_TRIM + 1 };

static const char *const op_sql[NOPS] = {
    [TMS_OUTBOX_FETCH] = "SELECT seq, event_id, topic, key, payload, created_at_ms FROM outbox"
                         " WHERE sent_at_ms IS NULL AND seq > ?2 ORDER BY seq LIMIT ?1",
    /* A sent event is deleted, as on PostgreSQL (pg/outbox.c says why). */
    [TMS_OUTBOX_MARK_SENT] = "DELETE FROM outbox WHERE seq = ?1",
    /* Adding a pending event_id again is a retry of the same event, not a second one. */
    [TMS_OUTBOX_ADD] = "INSERT INTO outbox (event_id, topic, key, payload, created_at_ms)"
                       " VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (event_id) DO NOTHING",
    [TMS_INBOX_SEEN] = "SELECT 1 FROM inbox WHERE consumer = ?1 AND event_id = ?2",
    [TMS_INBOX_RECORD] = "INSERT OR IGNORE INTO inbox (consumer, event_id, handled_at_ms)"
                         " VALUES (?1, ?2, ?3)",
    [TMS_OUTBOX_PENDING] = "SELECT count(*) FROM outbox WHERE sent_at_ms IS NULL",
    /* Among the ?2 oldest records (rowid order is the order they were recorded in), those
     * handled before ?1: a step reads ?2 rows at most, whatever the inbox holds, as it
     * runs on the writer thread. A record out of clock order among them (the wall clock
     * stepped back) makes the step short, not the last: the round goes on while steps
     * delete anything. */
    [TMS_INBOX_TRIM] = "DELETE FROM inbox WHERE rowid IN (SELECT rowid FROM inbox ORDER BY rowid"
                       " LIMIT ?2) AND handled_at_ms < ?1",
};

typedef struct outbox {
    sqlite3_stmt *stmt[NOPS];
} outbox_t;

int tms__sqlite_outbox_insert(sqlite3 *db, sqlite3_stmt **slot, const char *event_id,
                              const char *topic, const char *key, const char *payload,
                              int64_t now_ms)
{
    sqlite3_stmt *st = tms__sqlite_stmt(db, slot,
                                        "INSERT INTO outbox (event_id, topic, key, payload,"
                                        " created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)");
    int rc;
    if (!st)
        return SQLITE_ERROR;
    sqlite3_bind_text(st, 1, event_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, topic, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, key, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, payload, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, now_ms);
    rc = sqlite3_step(st);
    tms__sqlite_done(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static void *outbox_start(sqlite3 *db)
{
    outbox_t *o = tms_new(outbox_t);
    (void)db; /* statements are prepared on first use */
    return o;
}

static void outbox_stop(void *state)
{
    outbox_t *o = state;
    for (int i = 0; i < NOPS; i++)
        sqlite3_finalize(o->stmt[i]);
    free(o);
}

static int fetch(tms_outbox_op_t *op, sqlite3_stmt *st)
{
    size_t cap = op->limit > 0 ? (size_t)op->limit : 1;
    int rc;
    sqlite3_bind_int(st, 1, (int)cap);
    sqlite3_bind_int64(st, 2, op->after_seq);
    op->events = tms_calloc(cap, sizeof(tms_outbox_event_t));
    while ((rc = sqlite3_step(st)) == SQLITE_ROW && op->nevents < cap) {
        tms_outbox_event_t *e = &op->events[op->nevents++];
        e->seq = sqlite3_column_int64(st, 0);
        tms__sqlite_column_str(e->event_id, sizeof(e->event_id), st, 1);
        tms__sqlite_column_str(e->topic, sizeof(e->topic), st, 2);
        tms__sqlite_column_str(e->key, sizeof(e->key), st, 3);
        e->payload = tms__sqlite_column_dup(st, 4);
        e->created_at_ms = sqlite3_column_int64(st, 5);
    }
    return rc == SQLITE_ROW ? SQLITE_DONE : rc;
}

/* Removes every seq (in the op's savepoint of the group transaction: one fsync for all). */
static int mark_sent(tms_outbox_op_t *op, sqlite3_stmt *st)
{
    for (size_t i = 0; i < op->nseqs; i++) {
        int rc;
        sqlite3_bind_int64(st, 1, op->seqs[i]);
        rc = sqlite3_step(st);
        sqlite3_reset(st);
        if (rc != SQLITE_DONE)
            return rc;
    }
    return SQLITE_DONE;
}

/* Each of the op's ids in turn; a batch's records share the op's savepoint. */
static int inbox(tms_outbox_op_t *op, int kind, sqlite3_stmt *st)
{
    int64_t now = tms_now_ms();
    for (size_t i = 0; i < op->nids; i++) {
        int rc;
        sqlite3_bind_text(st, 1, op->consumer, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, op->ids[i], -1, SQLITE_STATIC);
        if (kind == TMS_INBOX_RECORD)
            sqlite3_bind_int64(st, 3, now);
        rc = sqlite3_step(st);
        sqlite3_reset(st);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE)
            return rc;
        if (kind == TMS_INBOX_SEEN)
            op->ids_seen[i] = rc == SQLITE_ROW;
    }
    return SQLITE_DONE;
}

static bool outbox_writes(int op)
{
    return op == TMS_OUTBOX_MARK_SENT || op == TMS_OUTBOX_ADD || op == TMS_INBOX_RECORD ||
           op == TMS_INBOX_TRIM;
}

static void outbox_run(void *state, sqlite3 *db, tms_msg_t *msg)
{
    outbox_t *o = state;
    tms_outbox_op_t *op = (tms_outbox_op_t *)msg;
    int kind = msg->op, rc;
    sqlite3_stmt *st = tms__sqlite_stmt(db, &o->stmt[kind], op_sql[kind]);

    if (!st) {
        tms_error_set(&op->err, TMS_INTERNAL, "internal error");
        return;
    }
    switch (kind) {
    case TMS_OUTBOX_FETCH:
        rc = fetch(op, st);
        break;
    case TMS_OUTBOX_MARK_SENT:
        rc = mark_sent(op, st);
        break;
    case TMS_OUTBOX_ADD: {
        tms_outbox_event_t *e = &op->event;
        sqlite3_bind_text(st, 1, e->event_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, e->topic, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, e->key, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, e->payload ? e->payload : "{}", -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 5, tms_now_ms());
        rc = sqlite3_step(st);
        break;
    }
    case TMS_INBOX_SEEN:
    case TMS_INBOX_RECORD:
        rc = inbox(op, kind, st);
        break;
    case TMS_INBOX_TRIM:
        sqlite3_bind_int64(st, 1, op->before_ms);
        sqlite3_bind_int(st, 2, op->limit > 0 ? op->limit : 1);
        rc = sqlite3_step(st);
        op->count = rc == SQLITE_DONE ? sqlite3_changes(db) : 0;
        op->more = op->count > 0;
        break;
    default: /* TMS_OUTBOX_PENDING */
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            op->count = sqlite3_column_int64(st, 0);
            rc = SQLITE_DONE;
        }
        break;
    }
    tms__sqlite_done(st);
    if (rc != SQLITE_DONE)
        tms__sqlite_fail(&op->err, db, rc, tms_store_op_name(TMS_STORE_OUTBOX, kind));
}

const tms_sqlite_port_t tms__sqlite_outbox_port = {
    .name = "outbox",
    .start = outbox_start,
    .writes = outbox_writes,
    .run = outbox_run,
    .stop = outbox_stop,
};
