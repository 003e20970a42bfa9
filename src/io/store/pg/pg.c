/* The PostgreSQL pool: a few libpq connections in non-blocking pipeline mode, each
 * socket on a uv_poll of the owning loop, a bounded FIFO of operations waiting for a
 * connection, per-op deadlines, and reconnection with exponential backoff and
 * jitter. Every operation is one prepared statement (or two, in one transaction), and
 * the ops sent in a row on one connection in one loop iteration, all reads or all
 * writes, share one sync: reads the server's per-sync work (its ReadyForQuery and
 * flush), writes one implicit transaction, so one commit and one WAL flush for all of
 * them (group commit: with a transaction per write, the pool's 4 connections made 0.41
 * WAL flushes per create, pgbench's 64 backends 0.04). A write is answered only at its
 * group's sync, once the group committed. A read aborted by a neighbour's error is sent
 * again alone; so is every write of a group that failed, except the one whose own error
 * failed it (finish_group). The pool flushes each connection once per loop iteration
 * (a uv_check after the iteration's I/O callbacks, and a uv_prepare before the loop
 * waits, for ops submitted later in the iteration), and closes the open groups then;
 * libpq may send earlier, when its buffer fills, so results can come back before a
 * group's sync went out (drain_results). Replies read in a
 * poll callback are delivered before it returns (tms_mailbox_batch_begin), not a loop
 * iteration later. Ports (tasks.c, outbox.c) turn ops into statement calls and results
 * back into ops. */
#include "io/store/pg/pg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/queue.h"
#include "io/store/pg/internal.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define TICK_MS 50
/* The relay's lead (tms_outbox_t.lead): a session advisory lock on a connection of
 * its own, and the channel the other processes NOTIFY after their writes. */
#define LEAD_LOCK_KEY 0x746d735f72656cLL /* "tms_rel" */
#define LEAD_CHANNEL "tms_outbox"
#define LEAD_RETRY_MS 1000 /* a process standing aside tries for the lock this often */
#define LEAD_BEAT_MS 1000  /* the holder shows it is alive this often ... */
/* ... and the server ends a lead session idle this long (PostgreSQL 14+), which frees
 * the lock of a holder whose loop hangs; a holder's host or network gone is found by
 * TCP keepalives and the user timeout on both ends (10 s), not 2 h of defaults. */
#define LEAD_IDLE_MS 5000
#define LEAD_SERVER_OPTIONS                                                                        \
    " -c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3"             \
    " -c tcp_user_timeout=10000"
enum { LQ_NONE, LQ_TRY, LQ_NOTIFY, LQ_BEAT };

static const tms_pg_port_t *const ports[TMS_STORE_NPORTS] = {
    [TMS_STORE_TASKS] = &tms__pg_tasks_port,
    [TMS_STORE_OUTBOX] = &tms__pg_outbox_port,
};

typedef struct req req_t;
struct req {
    req_t *next;
    int port; /* a tms_store_port_t, or -1: a connection's setup (the prepares) */
    tms_msg_t *msg;
    tms_pg_call_t call;
    uint64_t began;    /* tms_store_begin when sent; 0 while queued */
    uint64_t deadline; /* uv_now ms */
    int nq;            /* its statements (a first_stmt and the statement, or one) */
    int ngot;          /* results read */
    PGresult *res;     /* the last statement's result */
    PGresult *err;     /* the first error */
    bool synced;       /* a sync follows this op (else a read ends at its statement's end, a
                        * write waits for its group's sync: hold) */
    bool resent;       /* sent again alone after a neighbour's error aborted its group */
};

typedef struct conn conn_t;

typedef struct poll_h {
    uv_poll_t h;
    tms_pg_t *pg;
} poll_h_t;

typedef struct gai_h {
    uv_getaddrinfo_t r;
    conn_t *c; /* NULL once the connection gave up on this lookup */
} gai_h_t;

typedef enum { DOWN, RESOLVING, CONNECTING, SETUP, READY } conn_state_t;

struct conn {
    tms_pg_t *pg;
    int idx;
    conn_state_t state;
    PGconn *pq;
    poll_h_t *poll;
    int fd, events;
    uv_timer_t timer; /* reconnect backoff */
    gai_h_t *gai;
    req_t *head, *tail;
    int ninflight;
    int failures; /* consecutive failed connects or drops */
    uint64_t started;
    int dirty;   /* sent since the last flush */
    req_t *open; /* the last op sent without a sync yet (its group's end) */
    /* Writes of a group whose statements are done, waiting for the group's sync (its
     * commit) to be answered with it; older than every op in head..tail. */
    req_t *held, *held_tail;
    int nwrites;  /* writes in flight: while a group commits, the next one forms in the queue */
    bool is_lead; /* the relay's lead connection, outside the pool (no ops, no pipeline) */
};

struct tms_pg {
    tms_store_t st; /* first member: the ports, their lifecycle and metrics */
    long g_up;      /* connections up, read by any worker's /metrics */
    uv_loop_t *loop;
    tms_pg_options_t opt;
    PQconninfoOption *info;
    char *resolve_host; /* NULL: libpq connects without a name lookup */
    char options[1024];
    conn_t *conns;
    int nconns, up;
    req_t *qhead, *qtail;
    size_t qlen;
    size_t qreads; /* of them reads: pump stops walking past waiting writes at none */
    uv_timer_t tick;
    uv_check_t check;     /* after the iteration's I/O: sync and flush what was sent */
    uv_prepare_t prepare; /* before the loop waits: the same, for ops sent after check */
    int closing, handles;
    uint64_t rng;
    /* The relay's lead: conns[nconns], connected once a relay asks (tms_outbox_t.lead);
     * one query out at a time. */
    conn_t *lead;
    tms_outbox_lead_fn lead_fn;
    void *lead_arg;
    tms_outbox_lead_t lead_state;
    int lead_query; /* LQ_*: what is out on the lead connection */
    uint64_t lead_sent, lead_retry_at, lead_beat_at;
    char lead_options[1200]; /* options + LEAD_SERVER_OPTIONS */
    bool lead_notify;        /* a wake for the leader waits to be sent */
    tms_counter_t *wakes_out, *wakes_in;
    tms_counter_t *groups_failed; /* groups of writes rolled back and sent again */
};

static void conn_down(conn_t *c, const char *why);
static bool close_group(conn_t *c);
static void pump(tms_pg_t *pg);
static void on_poll(uv_poll_t *h, int status, int events);
static void lead_setup(conn_t *c);
static void lead_results(conn_t *c);
static void lead_lost(tms_pg_t *pg);
static void lead_next(conn_t *c);

/* ---- small helpers ------------------------------------------------------- */

const char *tms__pg_i64(char *buf, size_t size, long long v)
{
    snprintf(buf, size, "%lld", v);
    return buf;
}

void tms__pg_str(char *dst, size_t cap, const PGresult *res, int r, int c)
{
    snprintf(dst, cap, "%s", PQgetisnull(res, r, c) ? "" : PQgetvalue(res, r, c));
}

char *tms__pg_dup(const PGresult *res, int r, int c)
{
    return tms_strdup(PQgetisnull(res, r, c) ? "" : PQgetvalue(res, r, c));
}

long long tms__pg_int(const PGresult *res, int r, int c)
{
    return PQgetisnull(res, r, c) ? 0 : atoll(PQgetvalue(res, r, c));
}

bool tms_pg_url(const char *url)
{
    return strncmp(url, "postgres://", 11) == 0 || strncmp(url, "postgresql://", 13) == 0;
}

tms_task_store_t *tms_pg_task_store(tms_pg_t *pg)
{
    return tms_store_tasks(&pg->st);
}

tms_outbox_t *tms_pg_outbox(tms_pg_t *pg)
{
    return tms_store_outbox(&pg->st);
}

int tms_pg_connections_up(tms_pg_t *pg)
{
    return pg->up;
}

static void gauge_add(long *g, long d)
{
    __atomic_add_fetch(g, d, __ATOMIC_RELAXED);
}

static double gauge_read(void *arg)
{
    return (double)__atomic_load_n((long *)arg, __ATOMIC_RELAXED);
}

static void quiet(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

static void one_line(char *dst, size_t cap, const char *m)
{
    char tmp[256];
    snprintf(tmp, sizeof(tmp), "%.*s", (int)strcspn(m ? m : "", "\n"), m ? m : "");
    tms_log_quote(dst, cap, tmp, strlen(tmp));
}

/* ---- completing ops ----------------------------------------------------- */

/* The op is done with its connection. */
static void leave(conn_t *c, const req_t *r)
{
    c->ninflight--;
    if (r->port >= 0 && !r->call.read_only)
        c->nwrites--;
}

static void free_req(req_t *r)
{
    free(r->call.heap);
    PQclear(r->res);
    PQclear(r->err);
    free(r);
}

/* SQLSTATE classes that mean "try again later" rather than a bug: connection (08),
 * resources (53), operator intervention and statement timeout (57), transaction
 * rollback on serialization or deadlock (40). */
static void map_error(tms_error_t *e, const PGresult *res, const char *op)
{
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    char msg[256];
    one_line(msg, sizeof(msg), PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY));
    if (!state)
        state = "";
    if (!strncmp(state, "08", 2) || !strncmp(state, "53", 2) || !strncmp(state, "57", 2) ||
        !strncmp(state, "40", 2) || !state[0]) {
        tms_log_warn("pg_unavailable", "op=%s sqlstate=%s msg=%s", op, state, msg);
        tms_error_set(e, TMS_UNAVAILABLE, "store unavailable");
    } else {
        tms_log_error("pg_error", "op=%s sqlstate=%s msg=%s", op, state, msg);
        tms_error_set(e, TMS_INTERNAL, "internal error");
    }
}

static void reply(tms_pg_t *pg, req_t *r)
{
    tms_store_reply(&pg->st, (tms_store_port_t)r->port, r->msg, r->began);
    free_req(r);
}

static void fail_req(tms_pg_t *pg, req_t *r, const char *why)
{
    if (r->port < 0) {
        free_req(r);
        return;
    }
    tms_error_set(tms_store_op_err((tms_store_port_t)r->port, r->msg), TMS_UNAVAILABLE, "%s", why);
    reply(pg, r);
}

/* ---- the socket ---------------------------------------------------------- */

/* The last handle closed: the pool is gone. */
static void release(tms_pg_t *pg)
{
    if (--pg->handles == 0) {
        tms_metrics_drop_gauges_of(&pg->g_up);
        tms_store_released(&pg->st);
        free(pg->conns);
        free(pg);
    }
}

static void on_poll_closed(uv_handle_t *h)
{
    poll_h_t *p = (poll_h_t *)h;
    tms_pg_t *pg = p->pg;
    free(p);
    release(pg);
}

static void unwatch(conn_t *c)
{
    if (c->poll) {
        uv_close((uv_handle_t *)&c->poll->h, on_poll_closed);
        c->poll = NULL;
    }
    c->fd = -1;
    c->events = 0;
}

/* Watch the connection's current socket for events (libpq may change the socket
 * while connecting). */
static int watch(conn_t *c, int events)
{
    int fd = PQsocket(c->pq);
    if (fd < 0)
        return -1;
    if (c->poll && fd != c->fd)
        unwatch(c);
    if (!c->poll) {
        c->poll = tms_new(poll_h_t);
        c->poll->pg = c->pg;
        if (uv_poll_init(c->pg->loop, &c->poll->h, fd) != 0) {
            free(c->poll);
            c->poll = NULL;
            return -1;
        }
        c->pg->handles++;
        c->poll->h.data = c;
        c->fd = fd;
        c->events = 0;
    }
    if (events != c->events) {
        c->events = events;
        uv_poll_start(&c->poll->h, events, on_poll);
    }
    return 0;
}

static void flush(conn_t *c)
{
    int rc = PQflush(c->pq);
    c->dirty = 0;
    if (rc < 0)
        conn_down(c, PQerrorMessage(c->pq));
    else
        watch(c, rc == 1 ? UV_READABLE | UV_WRITABLE : UV_READABLE);
}

/* ---- connection lifecycle ------------------------------------------------ */

static int unreachable(tms_pg_t *pg)
{
    if (pg->up > 0)
        return 0;
    for (int i = 0; i < pg->nconns; i++)
        if (pg->conns[i].failures == 0)
            return 0;
    return 1;
}

static uint64_t jitter(tms_pg_t *pg, uint64_t max)
{
    pg->rng ^= pg->rng << 13;
    pg->rng ^= pg->rng >> 7;
    pg->rng ^= pg->rng << 17;
    return max ? pg->rng % (max + 1) : 0;
}

static void start_connect(conn_t *c);

static void on_backoff(uv_timer_t *t)
{
    start_connect(t->data);
}

static void conn_down(conn_t *c, const char *why)
{
    tms_pg_t *pg = c->pg;
    req_t *r;
    char msg[256];
    if (c->state == READY && !c->is_lead) {
        pg->up--;
        gauge_add(&pg->g_up, -1);
    }
    one_line(msg, sizeof(msg), why);
    tms_log(pg->closing || (c->is_lead && !pg->lead_fn) ? TMS_LOG_DEBUG : TMS_LOG_WARN,
            "pg_conn_down", "conn=%d%s state=%d inflight=%d why=%s", c->idx,
            c->is_lead ? " role=relay_lead" : "", (int)c->state, c->ninflight, msg);
    unwatch(c);
    if (c->gai) {
        c->gai->c = NULL;
        uv_cancel((uv_req_t *)&c->gai->r);
        c->gai = NULL;
    }
    PQfinish(c->pq);
    c->pq = NULL;
    c->state = DOWN;
    if (c->is_lead)
        lead_lost(pg); /* the lock went with the session */
    /* Whatever was in flight may or may not have committed; the caller learns
     * UNAVAILABLE and retries (creates with an Idempotency-Key replay safely). */
    while ((r = c->held) != NULL) {
        c->held = r->next;
        fail_req(pg, r, "store unavailable");
    }
    while ((r = c->head) != NULL) {
        c->head = r->next;
        fail_req(pg, r, "store unavailable");
    }
    c->tail = c->held_tail = NULL;
    c->open = NULL;
    c->ninflight = c->nwrites = 0;
    if (pg->closing)
        return;
    c->failures++;
    {
        int shift = c->failures - 1 < 6 ? c->failures - 1 : 6;
        uint64_t delay = (uint64_t)BACKOFF_MIN_MS << shift;
        if (delay > BACKOFF_MAX_MS)
            delay = BACKOFF_MAX_MS;
        /* full jitter over the upper half: spreads reconnects of many instances */
        delay = delay / 2 + jitter(pg, delay / 2);
        uv_timer_start(&c->timer, on_backoff, c->failures == 1 ? jitter(pg, 20) : delay, 0);
    }
    pump(pg); /* with every connection failing, queued ops fail now, not at deadline */
}

static void send_setup(conn_t *c)
{
    req_t *r = tms_new(req_t);
    r->port = -1;
    r->deadline = uv_now(c->pg->loop) + (uint64_t)c->pg->opt.statement_timeout_ms + 1000;
    PQsetnonblocking(c->pq, 1);
    PQsetNoticeProcessor(c->pq, quiet, NULL);
    if (PQenterPipelineMode(c->pq) != 1) {
        free(r);
        conn_down(c, "cannot enter pipeline mode");
        return;
    }
    for (int p = 0; p < TMS_STORE_NPORTS; p++) {
        for (size_t i = 0; ports[p] && i < ports[p]->nstmts; i++) {
            if (PQsendPrepare(c->pq, ports[p]->stmts[i].name, ports[p]->stmts[i].sql, 0, NULL) !=
                1) {
                free(r);
                conn_down(c, PQerrorMessage(c->pq));
                return;
            }
            r->nq++;
        }
    }
    if (PQpipelineSync(c->pq) != 1) {
        free(r);
        conn_down(c, PQerrorMessage(c->pq));
        return;
    }
    r->synced = true;
    c->head = c->tail = r;
    c->ninflight = 1;
    c->state = SETUP;
    flush(c);
}

static void connect_step(conn_t *c)
{
    PostgresPollingStatusType st = PQconnectPoll(c->pq);
    switch (st) {
    case PGRES_POLLING_OK:
        if (c->is_lead)
            lead_setup(c);
        else
            send_setup(c);
        return;
    case PGRES_POLLING_READING:
        if (watch(c, UV_READABLE) != 0)
            conn_down(c, "no socket");
        return;
    case PGRES_POLLING_WRITING:
        if (watch(c, UV_WRITABLE) != 0)
            conn_down(c, "no socket");
        return;
    default:
        conn_down(c, PQerrorMessage(c->pq));
        return;
    }
}

static void connect_to(conn_t *c, const char *hostaddr)
{
    tms_pg_t *pg = c->pg;
    const char *kw[72], *val[72];
    int n = 0;
    for (PQconninfoOption *o = pg->info; o->keyword && n < 60; o++) {
        if (!o->val || !strcmp(o->keyword, "options") ||
            (hostaddr && !strcmp(o->keyword, "hostaddr")))
            continue;
        kw[n] = o->keyword;
        val[n++] = o->val;
    }
    kw[n] = "options";
    val[n++] = c->is_lead ? pg->lead_options : pg->options;
    if (c->is_lead) { /* this end finds a dead server or network in ~10 s too */
        static const char *const ka[][2] = {{"keepalives", "1"},
                                            {"keepalives_idle", "5"},
                                            {"keepalives_interval", "2"},
                                            {"keepalives_count", "3"},
                                            {"tcp_user_timeout", "10000"}};
        for (size_t i = 0; i < sizeof(ka) / sizeof(ka[0]); i++) {
            kw[n] = ka[i][0];
            val[n++] = ka[i][1];
        }
    }
    if (hostaddr) {
        kw[n] = "hostaddr";
        val[n++] = hostaddr;
    }
    kw[n] = NULL;
    val[n] = NULL;
    c->pq = PQconnectStartParams(kw, val, 0);
    c->state = CONNECTING;
    if (!c->pq || PQstatus(c->pq) == CONNECTION_BAD) {
        conn_down(c, c->pq ? PQerrorMessage(c->pq) : "out of memory");
        return;
    }
    /* libpq: after PQconnectStart, act as if PQconnectPoll said WRITING. */
    if (watch(c, UV_WRITABLE) != 0)
        conn_down(c, "no socket");
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    gai_h_t *g = (gai_h_t *)req;
    conn_t *c = g->c;
    char ip[64] = "";
    if (c && status == 0) {
        for (struct addrinfo *a = res; a && !ip[0]; a = a->ai_next) {
            if (a->ai_family == AF_INET)
                uv_ip4_name((struct sockaddr_in *)a->ai_addr, ip, sizeof(ip));
            else if (a->ai_family == AF_INET6)
                uv_ip6_name((struct sockaddr_in6 *)a->ai_addr, ip, sizeof(ip));
        }
    }
    uv_freeaddrinfo(res);
    free(g);
    if (!c)
        return;
    c->gai = NULL;
    if (!ip[0]) {
        conn_down(c, status ? uv_strerror(status) : "host has no address");
        return;
    }
    connect_to(c, ip);
}

static void start_connect(conn_t *c)
{
    tms_pg_t *pg = c->pg;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM};
    if (pg->closing || (c->is_lead && !pg->lead_fn))
        return;
    c->started = uv_now(pg->loop);
    if (!pg->resolve_host) {
        connect_to(c, NULL);
        return;
    }
    c->state = RESOLVING;
    c->gai = tms_new(gai_h_t);
    c->gai->c = c;
    if (uv_getaddrinfo(pg->loop, &c->gai->r, on_resolved, pg->resolve_host, NULL, &hints) != 0) {
        free(c->gai);
        c->gai = NULL;
        conn_down(c, "cannot start name lookup");
    }
}

/* ---- results ------------------------------------------------------------- */

static void setup_done(conn_t *c, req_t *r)
{
    tms_pg_t *pg = c->pg;
    if (r->err) {
        char msg[256];
        one_line(msg, sizeof(msg), PQresultErrorMessage(r->err));
        free_req(r);
        tms_log_error("pg_prepare", "conn=%d msg=%s", c->idx, msg);
        conn_down(c, "prepare failed");
        return;
    }
    free_req(r);
    c->state = READY;
    c->failures = 0;
    pg->up++;
    gauge_add(&pg->g_up, 1);
    tms_log_info("pg_conn_up", "conn=%d up=%d", c->idx, pg->up);
}

/* The queue's counts, kept with every op that enters or leaves it. */
static void counted_in(tms_pg_t *pg, const req_t *r)
{
    pg->qlen++;
    pg->qreads += r->call.read_only;
}

static void counted_out(tms_pg_t *pg, const req_t *r)
{
    pg->qlen--;
    pg->qreads -= r->call.read_only;
}

/* Ops aborted by another op's error in their group (first..last, chained in the order
 * they were sent): first in the queue again, in that order, each to be sent with a sync
 * of its own. */
static void requeue(tms_pg_t *pg, req_t *first, req_t *last)
{
    for (req_t *r = first;; r = r->next) {
        PQclear(r->res);
        PQclear(r->err);
        r->res = r->err = NULL;
        r->ngot = 0;
        r->resent = true;
        counted_in(pg, r);
        if (r == last)
            break;
    }
    last->next = pg->qhead;
    pg->qhead = first;
    if (!pg->qtail)
        pg->qtail = last;
}

/* Answers the op from its results. */
static void answer(tms_pg_t *pg, req_t *r)
{
    tms_store_port_t port = (tms_store_port_t)r->port;
    tms_error_t *e = tms_store_op_err(port, r->msg);
    if (r->err)
        map_error(e, r->err, tms_store_op_name(port, r->msg->op));
    else if (r->res)
        ports[port]->finish(r->msg, r->res);
    else
        tms_error_set(e, TMS_INTERNAL, "internal error");
    reply(pg, r);
}

/* Whether a failed group's op failed it by its own error, which answers it. Not so for
 * an op the error aborted (PIPELINE_ABORTED), one that ran before the error (rolled back
 * with the group) or a deadlock or serialization failure (class 40: the group's longer
 * transaction can cause one); those are sent again alone. */
static bool own_error(const req_t *r)
{
    const char *state;
    if (!r->err || PQresultStatus(r->err) == PGRES_PIPELINE_ABORTED)
        return false;
    state = PQresultErrorField(r->err, PG_DIAG_SQLSTATE);
    return !state || strncmp(state, "40", 2) != 0;
}

/* A group of writes ended with its sync, the last op: the held ops (none for a write
 * that went alone) and it were one transaction. If none of them failed, it committed,
 * and all are answered; if one did, the server rolled all of it back: the op whose own
 * error it was is answered with it, and the others are sent again, each alone (once: an
 * op already sent again is answered with what it met). */
static void finish_group(conn_t *c, req_t *last)
{
    tms_pg_t *pg = c->pg;
    req_t *r, *next, *again = NULL, *again_tail = NULL;
    bool failed = false;
    TMS_FIFO_APPEND(c->held, c->held_tail, last, next);
    r = c->held;
    c->held = c->held_tail = NULL;
    for (req_t *q = r; q; q = q->next)
        failed = failed || q->err;
    for (; r; r = next) {
        next = r->next;
        leave(c, r);
        if (!failed || own_error(r) || r->resent) {
            answer(pg, r);
            continue;
        }
        TMS_FIFO_APPEND(again, again_tail, r, next);
    }
    if (again) {
        tms_counter_add(pg->groups_failed, 1);
        requeue(pg, again, again_tail);
    }
}

/* The op at the head of the connection's pipeline leaves it. */
static void pop_head(conn_t *c, const req_t *r)
{
    c->head = r->next;
    if (!c->head)
        c->tail = NULL;
}

/* A grouped write whose statements are done waits for its group's sync. */
static void hold(conn_t *c, req_t *r)
{
    pop_head(c, r);
    TMS_FIFO_APPEND(c->held, c->held_tail, r, next);
}

static void complete(conn_t *c, req_t *r)
{
    pop_head(c, r);
    if (r->port >= 0 && !r->call.read_only) { /* a write: the sync of its group */
        finish_group(c, r);
        return;
    }
    leave(c, r);
    if (r->port < 0) {
        setup_done(c, r);
        return;
    }
    if (r->err && PQresultStatus(r->err) == PGRES_PIPELINE_ABORTED && !r->resent) {
        requeue(c->pg, r, r);
        return;
    }
    answer(c->pg, r);
}

/* Reads every result that has arrived. In pipeline mode each statement's results end
 * with NULL; an op followed by a sync is complete at the sync's PGRES_PIPELINE_SYNC,
 * a read of a group (no sync of its own) at the NULL after its statement, and a write
 * of a group then waits (hold) for the group's sync. */
static void drain_results(conn_t *c)
{
    int nulls = 0;
    while (c->head && c->pq && !PQisBusy(c->pq)) {
        req_t *r = c->head;
        PGresult *res = PQgetResult(c->pq);
        if (!res) {
            if (r->ngot == 0 || ++nulls > 1)
                break; /* nothing more of this op yet */
            if (!r->synced && r->ngot >= r->nq) {
                /* The results of the group's last op, before its sync was sent: libpq
                 * sends early when its buffer fills, and an error comes back at once
                 * (the rest aborted). The group ends here, and the op at its sync, so
                 * that no op joins a group whose results are being read. */
                if (r == c->open) {
                    if (!close_group(c)) {
                        conn_down(c, PQerrorMessage(c->pq));
                        return;
                    }
                    c->dirty = 1;
                    continue;
                }
                nulls = 0;
                if (!r->call.read_only) {
                    hold(c, r);
                    continue;
                }
                complete(c, r);
                if (c->state == DOWN)
                    return;
            }
            continue;
        }
        nulls = 0;
        switch (PQresultStatus(res)) {
        case PGRES_PIPELINE_SYNC:
            PQclear(res);
            complete(c, r);
            break;
        case PGRES_FATAL_ERROR:
        case PGRES_NONFATAL_ERROR:
        case PGRES_BAD_RESPONSE:
        case PGRES_PIPELINE_ABORTED:
            r->ngot++;
            if (!r->err)
                r->err = res;
            else
                PQclear(res);
            break;
        default: /* the op's outcome is its last statement's */
            r->ngot++;
            PQclear(r->res);
            r->res = res;
            break;
        }
        if (c->state == DOWN)
            return;
    }
    if (c->pq && PQstatus(c->pq) == CONNECTION_BAD)
        conn_down(c, PQerrorMessage(c->pq));
}

static void poll_events(conn_t *c, int status, int events)
{
    if (status < 0) {
        conn_down(c, uv_strerror(status));
        return;
    }
    if (c->state == CONNECTING) {
        connect_step(c);
        return;
    }
    if (events & UV_WRITABLE) {
        flush(c);
        if (c->state == DOWN)
            return;
    }
    if (events & UV_READABLE) {
        if (PQconsumeInput(c->pq) != 1) {
            conn_down(c, PQerrorMessage(c->pq));
            return;
        }
        if (c->is_lead)
            lead_results(c);
        else
            drain_results(c);
    }
}

/* The replies of this callback (and the ops their requesters submit in turn) are
 * delivered before it returns, in one batch. */
static void on_poll(uv_poll_t *h, int status, int events)
{
    conn_t *c = h->data;
    tms_pg_t *pg = c->pg;
    bool batch = tms_mailbox_batch_begin();
    poll_events(c, status, events);
    pump(pg);
    tms_mailbox_batch_end(batch);
}

/* ---- dispatch ------------------------------------------------------------ */

/* Whether the connection has a group of writes open (still taking writes). */
static bool open_writes(const conn_t *c)
{
    return c->open && !c->open->call.read_only;
}

/* Whether the op goes in a sync (a transaction) of its own: sent again after its group
 * failed, or a solo write (tms_pg_call_t.solo). */
static bool alone(const req_t *r)
{
    return r->resent || r->call.solo;
}

/* Whether the write may go to the connection: into its open group of writes, or as
 * the first of a group when no write is in flight there. So while a group commits (its
 * WAL flush), the writes arriving wait in the queue and go together as the next group:
 * the group's size follows the load. Reads go out at once; so do writes that go alone,
 * each in a transaction of its own, pipelined as before groups. */
static bool takes_write(const conn_t *c, const req_t *r)
{
    if (alone(r) || open_writes(c))
        return true;
    return c->nwrites == 0;
}

/* Whether c is a better connection for an op than best: for an op that would end an
 * open group of writes (a read, or a write going alone), one without such a group; then
 * the one with fewer ops in flight. */
static bool better(const conn_t *c, const conn_t *best, bool ends_group)
{
    if (!best)
        return true;
    if (ends_group && open_writes(best) != open_writes(c))
        return !open_writes(c);
    return c->ninflight < best->ninflight;
}

/* The connection for the op: a write's open group first, else the better one. */
static conn_t *pick(tms_pg_t *pg, const req_t *r)
{
    conn_t *best = NULL;
    for (int i = 0; i < pg->nconns; i++) {
        conn_t *c = &pg->conns[i];
        if (c->state != READY || c->ninflight >= pg->opt.pipeline_depth)
            continue;
        if (!r->call.read_only && !takes_write(c, r))
            continue;
        if (!r->call.read_only && open_writes(c) && !alone(r))
            return c;
        if (better(c, best, r->call.read_only || alone(r)))
            best = c;
    }
    return best;
}

/* Ends the connection's open group with a sync. */
static bool close_group(conn_t *c)
{
    if (!c->open)
        return true;
    c->open->synced = true;
    c->open = NULL;
    return PQpipelineSync(c->pq) == 1;
}

/* An op joins the open group if it is of the group's kind (reads or writes), else it
 * starts one; an op sent again goes alone. */
static void send_req(conn_t *c, req_t *r)
{
    bool group = !alone(r);
    bool join = group && (!c->open || c->open->call.read_only == r->call.read_only);
    bool sent = (join || close_group(c)) &&
                (!r->call.first_stmt ||
                 PQsendQueryPrepared(c->pq, r->call.first_stmt, r->call.first_nparams,
                                     r->call.first_values, NULL, NULL, 0) == 1) &&
                PQsendQueryPrepared(c->pq, r->call.stmt, r->call.nparams, r->call.values, NULL,
                                    NULL, 0) == 1 &&
                (group || PQpipelineSync(c->pq) == 1);
    r->synced = !group;
    if (!r->call.read_only)
        c->nwrites++;
    TMS_FIFO_APPEND(c->head, c->tail, r, next);
    c->ninflight++;
    if (!sent) { /* the connection is broken: this op fails like the ones in flight */
        conn_down(c, PQerrorMessage(c->pq));
        return;
    }
    if (group)
        c->open = r;
    c->dirty = 1;
}

/* Once per loop iteration: every open group gets its sync, every connection sent to
 * one flush. */
static void flush_all(tms_pg_t *pg)
{
    for (int i = 0; i < pg->nconns; i++) {
        conn_t *c = &pg->conns[i];
        if (c->state != READY || (!c->dirty && !c->open))
            continue;
        if (!close_group(c)) {
            conn_down(c, PQerrorMessage(c->pq));
            continue;
        }
        flush(c);
    }
}

/* A connection found broken fails its ops: their replies are delivered now, and what
 * their requesters send in turn is flushed too (a failure then replies through the
 * mailbox's wake-up), so nothing sent waits for the loop's next wake-up. */
static void flush_iteration(tms_pg_t *pg)
{
    bool batch = tms_mailbox_batch_begin();
    flush_all(pg);
    tms_mailbox_batch_end(batch);
    flush_all(pg);
}

static void on_check(uv_check_t *h)
{
    flush_iteration(h->data);
}

static void on_prepare(uv_prepare_t *h)
{
    flush_iteration(h->data);
}

/* Sends queued ops, oldest first, while connections take them. A write that no
 * connection takes now (each has a group committing) waits, and so do the writes
 * behind it, in their order; the reads behind it go out. */
static void pump(tms_pg_t *pg)
{
    req_t **link = &pg->qhead, *r, *kept = NULL;
    bool writes_wait = false;
    while ((r = *link) != NULL && !pg->closing && !(writes_wait && pg->qreads == 0)) {
        int dead = unreachable(pg);
        conn_t *c = NULL;
        if (!dead && !(writes_wait && !r->call.read_only))
            c = pick(pg, r);
        if (!dead && !c) {
            if (r->call.read_only)
                break; /* no connection has room */
            writes_wait = true;
            kept = r;
            link = &r->next;
            continue;
        }
        *link = r->next;
        if (pg->qtail == r)
            pg->qtail = kept;
        counted_out(pg, r);
        if (dead) {
            fail_req(pg, r, "store unavailable");
            continue;
        }
        if (!r->began) /* an op sent again began the first time */
            r->began = tms_store_begin(&pg->st);
        send_req(c, r);
        if (c->state != READY)
            return; /* it went down, and conn_down pumped the queue itself */
    }
}

/* The backend's submit (loop thread). */
static int pg_submit(tms_store_t *st, tms_store_port_t port, tms_msg_t **pmsg)
{
    tms_pg_t *pg = (tms_pg_t *)st;
    tms_msg_t *msg = *pmsg;
    req_t *r;
    if (pg->qlen >= pg->opt.queue_capacity)
        return -TMS_EFULL;
    *pmsg = NULL;
    r = tms_new(req_t);
    r->port = (int)port;
    r->msg = msg;
    r->deadline = uv_now(pg->loop) + (uint64_t)pg->opt.statement_timeout_ms + 1000;
    if (ports[port]->prepare(msg, &r->call) != 0) {
        reply(pg, r);
        return 0;
    }
    r->nq = r->call.first_stmt ? 2 : 1;
    /* A readiness probe answers now when no connection is up. */
    if (port == TMS_STORE_TASKS && msg->op == TMS_TASK_PING && pg->up == 0) {
        fail_req(pg, r, "store unavailable");
        return 0;
    }
    TMS_FIFO_APPEND(pg->qhead, pg->qtail, r, next);
    counted_in(pg, r);
    pump(pg);
    return 0;
}

/* Deadlines: queued ops that waited too long fail; a connection whose oldest op or
 * whose connect is overdue is dropped (failing its ops) and reconnected. */
static void on_tick(uv_timer_t *t)
{
    tms_pg_t *pg = t->data;
    uint64_t now = uv_now(pg->loop);
    req_t *r;
    while ((r = pg->qhead) != NULL && now >= r->deadline) {
        pg->qhead = r->next;
        if (!pg->qhead)
            pg->qtail = NULL;
        counted_out(pg, r);
        fail_req(pg, r, "store unavailable");
    }
    for (int i = 0; i <= pg->nconns; i++) { /* the pool and the lead connection */
        conn_t *c = &pg->conns[i];
        if ((c->state == RESOLVING || c->state == CONNECTING) &&
            now - c->started > (uint64_t)pg->opt.statement_timeout_ms)
            conn_down(c, "connect timed out");
        /* c->head, not a held write: the held ones' statements are done (they wait for
         * the commit at the group's sync, whose op is the head), so a held write may
         * wait past its own deadline, by at most the head's (statement_timeout + 1 s) */
        else if ((c->state == READY || c->state == SETUP) && c->head && now >= c->head->deadline)
            conn_down(c, "operation deadline passed");
    }
    if (pg->lead_query && now - pg->lead_sent > (uint64_t)pg->opt.statement_timeout_ms)
        conn_down(pg->lead, "relay lead query deadline passed");
    else
        lead_next(pg->lead); /* standing aside: try for the lock again when due */
}

/* ---- the relay's lead ----------------------------------------------------- */

/* Processes sharing the database each run a relay; the one whose lead connection holds
 * the advisory lock publishes (tms_outbox_t.lead). The lock is the session's: it goes
 * when the process or its connection does, and a process standing aside takes it at
 * its next try (LEAD_RETRY_MS). Every lead connection LISTENs; a process standing aside
 * NOTIFYs after its writes (on this connection, after their commit), which wakes the
 * leader's relay at once instead of at its next poll. */

static tms_pg_t *pg_of_outbox(tms_outbox_t *o)
{
    return (tms_pg_t *)((char *)o - offsetof(tms_store_t, outbox)); /* st is pg's first */
}

static void lead_tell(tms_pg_t *pg, tms_outbox_lead_t what)
{
    if (pg->lead_fn && !pg->closing)
        pg->lead_fn(pg->lead_arg, what);
}

static void lead_set(tms_pg_t *pg, tms_outbox_lead_t state)
{
    if (state == TMS_LEAD_OTHER)
        pg->lead_retry_at = uv_now(pg->loop) + LEAD_RETRY_MS;
    if (state != pg->lead_state) {
        pg->lead_state = state;
        lead_tell(pg, state);
    }
}

static void lead_lost(tms_pg_t *pg)
{
    pg->lead_query = LQ_NONE;
    pg->lead_notify = false; /* this process relays itself now (core/outbox.h) */
    lead_set(pg, TMS_LEAD_UNKNOWN);
}

static void lead_send(conn_t *c, const char *sql, int kind)
{
    tms_pg_t *pg = c->pg;
    if (PQsendQuery(c->pq, sql) != 1) {
        conn_down(c, PQerrorMessage(c->pq));
        return;
    }
    pg->lead_query = kind;
    pg->lead_sent = uv_now(pg->loop);
    flush(c);
}

static void lead_setup(conn_t *c)
{
    char sql[320];
    PQsetnonblocking(c->pq, 1);
    PQsetNoticeProcessor(c->pq, quiet, NULL);
    c->state = SETUP;
    snprintf(sql, sizeof(sql),
             "SELECT set_config('idle_session_timeout', '%d', false)"
             " WHERE current_setting('server_version_num')::int >= 140000;"
             " LISTEN " LEAD_CHANNEL "; SELECT pg_try_advisory_lock(%lld)",
             LEAD_IDLE_MS, LEAD_LOCK_KEY);
    lead_send(c, sql, LQ_TRY);
}

/* The next query, when none is out: a wake for the leader, or a try for the lock. */
static void lead_next(conn_t *c)
{
    tms_pg_t *pg = c->pg;
    char sql[128];
    bool notify = pg->lead_notify;
    if (c->state != READY || pg->lead_query != LQ_NONE)
        return;
    if (notify) {
        pg->lead_notify = false;
        tms_counter_add(pg->wakes_out, 1);
    }
    /* a try when due goes first (with the wake, if any): writes here faster than a
     * NOTIFY's round trip must not keep this process from ever trying again */
    if (pg->lead_state == TMS_LEAD_OTHER && uv_now(pg->loop) >= pg->lead_retry_at) {
        snprintf(sql, sizeof(sql), "%sSELECT pg_try_advisory_lock(%lld)",
                 notify ? "NOTIFY " LEAD_CHANNEL "; " : "", LEAD_LOCK_KEY);
        lead_send(c, sql, LQ_TRY);
    } else if (notify) {
        lead_send(c, "NOTIFY " LEAD_CHANNEL, LQ_NOTIFY);
    } else if (pg->lead_state == TMS_LEAD_HELD && uv_now(pg->loop) >= pg->lead_beat_at) {
        pg->lead_beat_at = uv_now(pg->loop) + LEAD_BEAT_MS;
        lead_send(c, "SELECT 1", LQ_BEAT);
    }
}

static void lead_results(conn_t *c)
{
    tms_pg_t *pg = c->pg;
    PGnotify *n;
    uint64_t woken = 0;
    while (pg->lead_query != LQ_NONE && !PQisBusy(c->pq)) {
        PGresult *res = PQgetResult(c->pq);
        if (!res) { /* the query is done */
            pg->lead_query = LQ_NONE;
            if (c->state == SETUP) {
                c->state = READY;
                c->failures = 0;
                tms_log_info("pg_conn_up", "conn=%d role=relay_lead", c->idx);
            }
            lead_next(c);
            if (c->state == DOWN)
                return;
            continue;
        }
        if (PQresultStatus(res) == PGRES_TUPLES_OK && PQnfields(res) == 1 &&
            strcmp(PQfname(res, 0), "pg_try_advisory_lock") == 0) {
            bool held = PQntuples(res) == 1 && PQgetvalue(res, 0, 0)[0] == 't';
            lead_set(pg, held ? TMS_LEAD_HELD : TMS_LEAD_OTHER);
        } else if (PQresultStatus(res) != PGRES_COMMAND_OK &&
                   PQresultStatus(res) != PGRES_TUPLES_OK) { /* set_config, SELECT 1 */
            char msg[256];
            one_line(msg, sizeof(msg), PQresultErrorMessage(res));
            PQclear(res);
            tms_log_warn("pg_relay_lead", "msg=%s", msg);
            conn_down(c, "relay lead query failed");
            return;
        }
        PQclear(res);
    }
    while ((n = PQnotifies(c->pq)) != NULL) {
        woken += n->be_pid != PQbackendPID(c->pq); /* not our own NOTIFY, echoed back */
        PQfreemem(n);
    }
    if (woken) {
        tms_counter_add(pg->wakes_in, woken);
        lead_tell(pg, TMS_LEAD_WOKEN);
    }
    if (c->pq && PQstatus(c->pq) == CONNECTION_BAD)
        conn_down(c, PQerrorMessage(c->pq));
}

/* tms_outbox_t.lead: the relay on this pool's loop asks (worker 0's pool only). */
static void pg_lead(tms_outbox_t *self, tms_outbox_lead_fn fn, void *arg)
{
    tms_pg_t *pg = pg_of_outbox(self);
    pg->lead_fn = fn;
    pg->lead_arg = arg;
    if (!fn) { /* the relay stopped: give the lock up now, not when the pool closes */
        if (pg->lead->state != DOWN || pg->lead->pq)
            conn_down(pg->lead, "relay stopped");
        uv_timer_stop(&pg->lead->timer);
        return;
    }
    if (pg->lead->state == DOWN && !uv_is_active((uv_handle_t *)&pg->lead->timer))
        start_connect(pg->lead);
}

static void pg_wake_leader(tms_outbox_t *self)
{
    tms_pg_t *pg = pg_of_outbox(self);
    pg->lead_notify = true;
    lead_next(pg->lead);
}

/* ---- open and close ------------------------------------------------------ */

static void on_handle_closed(uv_handle_t *h)
{
    release(h->data);
}

static void metrics(tms_pg_t *pg)
{
    tms_metrics_gauge_fn("tms_pg_connections_up", "PostgreSQL connections ready.", "", gauge_read,
                         &pg->g_up);
    static const char wakes_help[] = "NOTIFYs to the relaying process (out) and received (in)";
    pg->wakes_out = tms_metrics_counter("tms_outbox_lead_wakes_total", wakes_help, "dir=\"out\"");
    pg->wakes_in = tms_metrics_counter("tms_outbox_lead_wakes_total", wakes_help, "dir=\"in\"");
    pg->groups_failed = tms_metrics_counter(
        "tms_pg_write_groups_retried_total",
        "Groups of writes (one transaction) that failed, their other writes sent again alone", "");
}

/* Which host name, if any, the pool must resolve itself (libpq's lookup blocks). */
static void find_host(tms_pg_t *pg)
{
    const char *host = NULL, *hostaddr = NULL, *opts = NULL;
    for (PQconninfoOption *o = pg->info; o->keyword; o++) {
        if (!strcmp(o->keyword, "host"))
            host = o->val;
        else if (!strcmp(o->keyword, "hostaddr"))
            hostaddr = o->val;
        else if (!strcmp(o->keyword, "options"))
            opts = o->val;
    }
    /* synchronize_seqscans off: the inbox trim resumes each step after the last ctid
     * it picked, which needs its scan to run in page order from where it asked; a
     * synchronized seq scan of a large table starts where another scan of it was. No
     * other statement here scans a table. */
    snprintf(pg->options, sizeof(pg->options),
             "%s%s-c statement_timeout=%d -c synchronize_seqscans=off", opts ? opts : "",
             opts && opts[0] ? " " : "", pg->opt.statement_timeout_ms);
    snprintf(pg->lead_options, sizeof(pg->lead_options), "%s" LEAD_SERVER_OPTIONS, pg->options);
    if (hostaddr && hostaddr[0])
        return;
    if (!host || !host[0] || host[0] == '/' || host[0] == '@')
        return; /* unix socket */
    if (strchr(host, ',')) {
        tms_log_warn("pg_multi_host", "%s", "several hosts: libpq resolves them (may block)");
        return;
    }
    pg->resolve_host = tms_strdup(host);
}

/* Every port handed out is closed and drained (nothing queued or in flight): close
 * the connections and handles; pg goes in the last close callback (release). */
static void pg_release(tms_store_t *st)
{
    tms_pg_t *pg = (tms_pg_t *)st;
    pg->closing = 1;
    for (int i = 0; i <= pg->nconns; i++) { /* the pool and the lead connection */
        conn_t *c = &pg->conns[i];
        if (c->state != DOWN || c->pq)
            conn_down(c, "closing");
        c->timer.data = pg;
        uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    }
    PQconninfoFree(pg->info);
    pg->info = NULL;
    free(pg->resolve_host);
    pg->resolve_host = NULL;
    uv_close((uv_handle_t *)&pg->tick, on_handle_closed);
    uv_close((uv_handle_t *)&pg->check, on_handle_closed);
    uv_close((uv_handle_t *)&pg->prepare, on_handle_closed);
}

static const tms_store_backend_t backend = {
    .name = "postgres",
    .submit = pg_submit,
    .release = pg_release,
};

tms_pg_t *tms_pg_open(uv_loop_t *loop, const char *url, const tms_pg_options_t *opt, char *err,
                      size_t err_len)
{
    tms_pg_t *pg;
    char *perr = NULL;
    PQconninfoOption *info;
    PGconn *sync;

    sync = tms__pg_connect_sync(url, err, err_len);
    if (!sync)
        return NULL;
    if (tms__pg_check_server(sync, opt && opt->accept_async_commit, err, err_len) != 0 ||
        (opt && opt->migrate && tms__pg_apply_migrations(sync, err, err_len) != 0)) {
        PQfinish(sync);
        return NULL;
    }
    if (opt && opt->purge_sent)
        tms__pg_purge_sent(sync);
    PQfinish(sync);
    info = PQconninfoParse(url, &perr);
    if (!info) {
        snprintf(err, err_len, "postgres: bad URL: %s", perr ? perr : "out of memory");
        PQfreemem(perr);
        return NULL;
    }

    pg = tms_new(tms_pg_t);
    tms_store_init(&pg->st, &backend, loop,
                   TMS_STORE_SERVES(TMS_STORE_TASKS) | TMS_STORE_SERVES(TMS_STORE_OUTBOX));
    pg->loop = loop;
    pg->info = info;
    if (opt)
        pg->opt = *opt;
    if (pg->opt.pool_size <= 0)
        pg->opt.pool_size = 4;
    if (pg->opt.pipeline_depth <= 0)
        pg->opt.pipeline_depth = 32;
    if (pg->opt.statement_timeout_ms <= 0)
        pg->opt.statement_timeout_ms = 5000;
    if (pg->opt.queue_capacity == 0)
        pg->opt.queue_capacity = 1024;
    pg->rng = uv_hrtime() | 1;
    find_host(pg);
    metrics(pg);

    uv_timer_init(loop, &pg->tick);
    pg->tick.data = pg;
    pg->handles++;
    uv_timer_start(&pg->tick, on_tick, TICK_MS, TICK_MS);
    uv_unref((uv_handle_t *)&pg->tick);
    uv_check_init(loop, &pg->check);
    pg->check.data = pg;
    pg->handles++;
    uv_check_start(&pg->check, on_check);
    uv_unref((uv_handle_t *)&pg->check);
    uv_prepare_init(loop, &pg->prepare);
    pg->prepare.data = pg;
    pg->handles++;
    uv_prepare_start(&pg->prepare, on_prepare);
    uv_unref((uv_handle_t *)&pg->prepare);
    pg->nconns = pg->opt.pool_size;
    pg->conns = tms_calloc((size_t)pg->nconns + 1, sizeof(conn_t));
    pg->lead = &pg->conns[pg->nconns];
    pg->lead->is_lead = true;
    for (int i = 0; i <= pg->nconns; i++) {
        conn_t *c = &pg->conns[i];
        c->pg = pg;
        c->idx = i;
        c->fd = -1;
        uv_timer_init(loop, &c->timer);
        c->timer.data = c;
        pg->handles++;
        start_connect(c); /* the lead connection: once a relay asks (pg_lead) */
    }
    pg->st.outbox.lead = pg_lead;
    pg->st.outbox.wake_leader = pg_wake_leader;
    return pg;
}
