/* The outbox and inbox port on PostgreSQL: pending events in seq order for the
 * relay, removing them once sent, standalone events (saga compensation), and the
 * consumers' handled-event log; one prepared statement each. Runs on the pool's loop
 * thread. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "io/store/pg/internal.h"

static const tms_pg_stmt_t stmts[] = {
    {"outbox_fetch", "SELECT seq, event_id, topic, key, payload, created_at_ms FROM outbox"
                     " WHERE sent_at_ms IS NULL AND seq > $2 ORDER BY seq LIMIT $1"},
    /* One statement for the whole batch. A sent event's row is deleted, not updated:
     * an update wrote a new version of the row and an entry in each of its indexes
     * (sent_at_ms is in the pending index's predicate, so it is never a HOT update),
     * ~15 us of the server per event against ~5 for a delete (pgbench, batches of
     * 50); and sent rows piled up with nothing to purge them. (sent_at_ms stays for
     * instances of an older version during an upgrade: they still mark.) */
    {"outbox_mark_sent", "DELETE FROM outbox WHERE seq = ANY($1::bigint[])"},
    /* the same event again while pending is a retry, not an error (as on SQLite and
     * MongoDB) */
    {"outbox_add", "INSERT INTO outbox (event_id, topic, key, payload, created_at_ms)"
                   " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id) DO NOTHING"},
    /* one statement for all of an op's ids. A batch's rows go in id order: two
     * processes recording the same events (an event published twice lands on two of
     * them) then wait for each other in one order. (Two groups of writes (pg.c) can
     * still deadlock on them; the pool then sends their writes again alone.) */
    {"inbox_seen", "SELECT event_id FROM inbox WHERE consumer = $1 AND event_id = ANY($2::text[])"},
    {"inbox_record", "INSERT INTO inbox (consumer, event_id, handled_at_ms)"
                     " SELECT $1::text, e, $3::bigint FROM unnest($2::text[]) AS e ORDER BY e"
                     " ON CONFLICT DO NOTHING"},
    {"outbox_pending", "SELECT count(*) FROM outbox WHERE sent_at_ms IS NULL"},
    /* $2 records at most handled before $1, from the ctid $3 on (a TID range scan on
     * PostgreSQL 14+: a round reads the table once, not from its first page at every
     * step); answers the records deleted, those picked, and the last ctid picked (the
     * next step's $3). No index on handled_at_ms: one would cost every record. */
    {"inbox_trim",
     "WITH picked AS (SELECT ctid FROM inbox WHERE ctid > $3::tid AND handled_at_ms < $1 LIMIT $2),"
     " gone AS (DELETE FROM inbox WHERE ctid = ANY(ARRAY(SELECT ctid FROM picked)) RETURNING 1)"
     " SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM picked),"
     " (SELECT ctid FROM picked ORDER BY ctid DESC LIMIT 1)"},
};

/* "{1,2,3}": a bigint[] parameter in text form. Heap. */
static char *seq_array(const int64_t *seqs, size_t n)
{
    size_t cap = n * 21 + 3, len = 0;
    char *s = tms_malloc(cap);
    s[len++] = '{';
    for (size_t i = 0; i < n; i++)
        len += (size_t)snprintf(s + len, cap - len, "%s%lld", i ? "," : "", (long long)seqs[i]);
    snprintf(s + len, cap - len, "}");
    return s;
}

/* '{"id1","id2"}': the op's event ids as a text[] parameter, each quoted (a " or \\
 * escaped), whatever a producer put in them. Heap. */
static char *id_array(const tms_outbox_op_t *op)
{
    size_t cap = op->nids * (2 * 36 + 3) + 3, len = 0;
    char *s = tms_malloc(cap);
    s[len++] = '{';
    for (size_t i = 0; i < op->nids; i++) {
        const char *id = op->ids[i];
        if (i)
            s[len++] = ',';
        s[len++] = '"';
        for (; *id; id++) {
            if (*id == '"' || *id == '\\')
                s[len++] = '\\';
            s[len++] = *id;
        }
        s[len++] = '"';
    }
    s[len++] = '}';
    s[len] = '\0';
    return s;
}

static int prepare(tms_msg_t *msg, tms_pg_call_t *c)
{
    tms_outbox_op_t *op = (tms_outbox_op_t *)msg;
    const char **v = c->values;
    c->stmt = tms_store_op_name(TMS_STORE_OUTBOX, msg->op);
    switch (msg->op) {
    case TMS_OUTBOX_FETCH:
        c->read_only = true;
        c->nparams = 2;
        v[0] = tms__pg_i64(c->num[0], sizeof(c->num[0]), op->limit > 0 ? op->limit : 1);
        v[1] = tms__pg_i64(c->num[1], sizeof(c->num[1]), op->after_seq);
        break;
    case TMS_OUTBOX_MARK_SENT:
        c->nparams = 1;
        c->heap = seq_array(op->seqs, op->nseqs);
        v[0] = c->heap;
        break;
    case TMS_OUTBOX_ADD:
        c->nparams = 5;
        v[0] = op->event.event_id;
        v[1] = op->event.topic;
        v[2] = op->event.key;
        v[3] = op->event.payload ? op->event.payload : "{}";
        v[4] = tms__pg_i64(c->num[0], sizeof(c->num[0]), tms_now_ms());
        break;
    case TMS_INBOX_SEEN:
    case TMS_INBOX_RECORD:
        c->nparams = msg->op == TMS_INBOX_RECORD ? 3 : 2;
        c->read_only = msg->op == TMS_INBOX_SEEN;
        c->heap = id_array(op);
        v[0] = op->consumer;
        v[1] = c->heap;
        v[2] = tms__pg_i64(c->num[0], sizeof(c->num[0]), tms_now_ms());
        break;
    case TMS_INBOX_TRIM:
        c->solo = true; /* up to op->limit rows: a transaction of its own */
        c->nparams = 3;
        v[0] = tms__pg_i64(c->num[0], sizeof(c->num[0]), op->before_ms);
        v[1] = tms__pg_i64(c->num[1], sizeof(c->num[1]), op->limit > 0 ? op->limit : 1);
        v[2] = op->resume[0] ? op->resume : "(0,0)";
        break;
    default: /* PENDING */
        c->read_only = true;
        c->nparams = 0;
        break;
    }
    return 0;
}

static void finish(tms_msg_t *msg, const PGresult *res)
{
    tms_outbox_op_t *op = (tms_outbox_op_t *)msg;
    int n = PQntuples(res);
    switch (msg->op) {
    case TMS_OUTBOX_FETCH: {
        size_t cap = op->limit > 0 ? (size_t)op->limit : 1;
        op->events = tms_calloc(cap, sizeof(tms_outbox_event_t));
        op->nevents = 0;
        for (int r = 0; r < n && op->nevents < cap; r++) {
            tms_outbox_event_t *e = &op->events[op->nevents++];
            e->seq = tms__pg_int(res, r, 0);
            tms__pg_str(e->event_id, sizeof(e->event_id), res, r, 1);
            tms__pg_str(e->topic, sizeof(e->topic), res, r, 2);
            tms__pg_str(e->key, sizeof(e->key), res, r, 3);
            e->payload = tms__pg_dup(res, r, 4);
            e->created_at_ms = tms__pg_int(res, r, 5);
        }
        break;
    }
    case TMS_INBOX_SEEN:
        for (size_t i = 0; i < op->nids; i++) {
            op->ids_seen[i] = false;
            for (int r = 0; r < n; r++)
                if (strcmp(PQgetvalue(res, r, 0), op->ids[i]) == 0)
                    op->ids_seen[i] = true;
        }
        break;
    case TMS_OUTBOX_PENDING:
        op->count = n > 0 ? tms__pg_int(res, 0, 0) : 0;
        break;
    case TMS_INBOX_TRIM:
        op->count = n > 0 ? tms__pg_int(res, 0, 0) : 0;
        op->more = n > 0 && tms__pg_int(res, 0, 1) >= (op->limit > 0 ? op->limit : 1);
        if (n > 0 && !PQgetisnull(res, 0, 2))
            tms__pg_str(op->resume, sizeof(op->resume), res, 0, 2);
        break;
    default:
        break;
    }
}

const tms_pg_port_t tms__pg_outbox_port = {
    .name = "outbox",
    .stmts = stmts,
    .nstmts = sizeof(stmts) / sizeof(stmts[0]),
    .prepare = prepare,
    .finish = finish,
};
