/* Real-time push of task events (push.h). Costs: delivering an event is O(subscribers
 * of the hub); a token re-check round sorts the hub's subscribers by user, O(n log n)
 * every recheck_ms. */
#define _GNU_SOURCE /* memmem */
#include "core/push.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/metrics.h"

#define HOLE_RETRY_MS 20 /* re-read while a hole in the log may still fill */
#define ROOM_RETRY_MS 50 /* a replay waiting for its client to take what it has */
#define TICK_MS 1000     /* expiry, heartbeats and re-check rounds */
#define READ_TIMEOUT_MS 10000
#define HUB_MAILBOX 1024 /* revocation notices; past it the next round re-checks */
#define USER_BUCKETS 1024
/* Doorbells go only to processes that listen: one with streams says so on the
 * doorbell topic when its first stream opens and then this often, and another process
 * rings for LISTEN_TTL_MS after it last heard that (three announcements: one lost, or
 * one that failed to go out, does not stop the doorbells). A process that starts, or
 * whose feed joins late, rings once it hears the next one: until then, at most
 * ANNOUNCE_MS, remote streams get its writes at their poll. */
#define ANNOUNCE_MS 2000
#define LISTEN_TTL_MS 7000
/* A first stream announces at once, but not within this of the last announcement
 * (others still hear that one): a client opening and closing its one stream makes
 * at most one announcement a second, besides the periodic ones. */
#define ANNOUNCE_GAP_MS 1000
#define ANNOUNCE_KEY "\"listening\":\""
#define SELF_ID_LEN 16 /* hex digits of a process's id in its announcements */

enum { MSG_REVOKED = 1 };

/* ---- events -------------------------------------------------------------------- */

tms_push_event_t *tms_push_event_ref(tms_push_event_t *e)
{
    e->refs++;
    return e;
}

void tms_push_event_unref(tms_push_event_t **pe)
{
    tms_push_event_t *e = *pe;
    if (!e)
        return;
    *pe = NULL;
    if (--e->refs > 0)
        return;
    for (int i = 0; i < TMS_PUSH_ENC_N; i++)
        free(e->enc[i]);
    free(e);
}

/* A copy of src in one allocation, its strings after the struct; one reference. */
static tms_push_event_t *event_new(const tms_task_event_t *src)
{
    const char *title = src->task.title ? src->task.title : "";
    const char *desc = src->task.description ? src->task.description : "";
    size_t tl = strlen(title) + 1, dl = strlen(desc) + 1;
    tms_push_event_t *e = tms_calloc(1, sizeof(*e) + tl + dl);
    char *p = (char *)(e + 1);
    e->refs = 1;
    e->ev = *src;
    memcpy(p, title, tl);
    memcpy(p + tl, desc, dl);
    e->ev.task.title = p;
    e->ev.task.description = p + tl;
    return e;
}

/* ---- the process's part ------------------------------------------------------- */

typedef struct user_count {
    struct user_count *next;
    char user_id[TMS_USER_ID_LEN + 1];
    size_t n;
} user_count_t;

struct tms_push_shared {
    uv_loop_t *loop;
    tms_push_limits_t lim;
    tms_event_bus_t *bus;
    bool publish;
    pthread_mutex_t mu; /* hubs, total, users */
    tms_push_hub_t **hubs;
    size_t nhubs, hubs_cap;
    size_t total;
    user_count_t *users[USER_BUCKETS];
    uv_async_t wake; /* a poke from any thread: publish a doorbell or an announcement */
    atomic_int want_doorbell, want_announce;
    bool publishing, announcing, stopping, stopped, closed;
    /* Listening (ANNOUNCE_MS): this process's id in its announcements; until when
     * (tms_mono_ms) another process is known to have streams; when a doorbell was
     * last skipped for want of one (0: never). One skipped within poll_ms before an
     * announcement arrives is rung then: that stream may have opened just before the
     * write; an older one its poll has covered. */
    char self_id[SELF_ID_LEN + 1];
    uint64_t announced_at; /* tms_mono_ms of the last announcement sent; 0: none */
    _Atomic uint64_t listeners_until;
    uint64_t skipped_at;
    uv_timer_t announce_timer;
    int open_handles; /* wake, announce_timer: freed when both closed */
    void (*stopped_cb)(void *);
    void *stopped_arg;
    tms_mailbox_t *feed; /* doorbells of every process */
    tms_counter_t *doorbells_in, *doorbells_out;
};

/* Counters of every hub (process-wide series). */
static struct {
    pthread_once_t once;
    tms_counter_t *pushed, *resumed, *reset, *slow, *revoked, *expired, *refused_user,
        *refused_total, *gaps, *read_failed, *announced;
} m = {.once = PTHREAD_ONCE_INIT};

static void metrics_init(void)
{
    m.pushed = tms_metrics_counter("tms_push_events_total",
                                   "task events queued for subscribers (one per subscriber)", "");
    m.resumed =
        tms_metrics_counter("tms_push_resumes_total", "subscribers that resumed after an event id",
                            "outcome=\"replayed\"");
    m.reset =
        tms_metrics_counter("tms_push_resumes_total", "subscribers that resumed after an event id",
                            "outcome=\"reset\"");
    m.slow = tms_metrics_counter("tms_push_dropped_total", "subscribers the server ended",
                                 "reason=\"slow_consumer\"");
    m.revoked = tms_metrics_counter("tms_push_dropped_total", "subscribers the server ended",
                                    "reason=\"revoked\"");
    m.expired = tms_metrics_counter("tms_push_dropped_total", "subscribers the server ended",
                                    "reason=\"expired\"");
    m.refused_user = tms_metrics_counter("tms_push_refused_total", "subscriptions refused",
                                         "reason=\"per_user\"");
    m.refused_total =
        tms_metrics_counter("tms_push_refused_total", "subscriptions refused", "reason=\"total\"");
    m.gaps = tms_metrics_counter("tms_push_gaps_total",
                                 "holes in the push log given up after the gap wait", "");
    m.read_failed = tms_metrics_counter("tms_push_read_failures_total",
                                        "reads of the push log that failed", "");
    m.announced = tms_metrics_counter(
        "tms_push_listening_announcements_total",
        "announcements on the doorbell topic that this process has streams", "");
}

static double subscribers_gauge(void *arg)
{
    return (double)tms_push_subscribers(arg);
}

static void hub_poke(tms_push_hub_t *hub);
static void hub_post_revoked(tms_push_hub_t *hub, const char *user_id);

static void poke_hubs(tms_push_shared_t *s)
{
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < s->nhubs; i++)
        hub_poke(s->hubs[i]);
    pthread_mutex_unlock(&s->mu);
}

static void publish_doorbell(tms_push_shared_t *s);
static void publish_announcement(tms_push_shared_t *s);

/* Stopping: done once neither a doorbell nor an announcement is in flight. */
static void check_stopped(tms_push_shared_t *s)
{
    if (s->stopping && !s->publishing && !s->announcing && !s->stopped) {
        s->stopped = true;
        if (s->stopped_cb)
            s->stopped_cb(s->stopped_arg);
    }
}

static void on_doorbell_sent(void *ctx, int status)
{
    tms_push_shared_t *s = ctx;
    s->publishing = false;
    if (status == 0)
        tms_counter_add(s->doorbells_out, 1);
    if (s->stopping) {
        check_stopped(s);
        return;
    }
    if (atomic_load(&s->want_doorbell))
        publish_doorbell(s);
}

static bool listeners_known(const tms_push_shared_t *s)
{
    return tms_mono_ms() < atomic_load(&s->listeners_until);
}

/* At most one doorbell in flight; pokes meanwhile make one more after it. None while
 * no other process is known to have streams: a process's own hubs were poked
 * directly, and a doorbell nobody listens for costs the broker a produce and every
 * process a fetch (issue 20: two thirds of TMS's requests to the broker in the Kafka
 * bench at full load). */
static void publish_doorbell(tms_push_shared_t *s)
{
    static const char body[] = "{}";
    if (s->publishing || s->stopping || !s->publish || !s->bus)
        return;
    atomic_store(&s->want_doorbell, 0);
    if (!listeners_known(s)) {
        s->skipped_at = tms_mono_ms();
        return;
    }
    s->skipped_at = 0;
    s->publishing = true;
    if (s->bus->publish(s->bus, TMS_PUSH_TOPIC, "", body, sizeof(body) - 1, on_doorbell_sent, s) !=
        0)
        s->publishing = false; /* the poll of the other processes covers it */
}

static void on_announcement_sent(void *ctx, int status)
{
    tms_push_shared_t *s = ctx;
    s->announcing = false;
    if (status == 0)
        tms_counter_add(m.announced, 1);
    /* A first stream that opened meanwhile was announced by this one (the message is
     * the same); a failed one is repeated by the timer. */
    check_stopped(s);
}

/* "This process has streams": other processes ring doorbells for LISTEN_TTL_MS. */
static void publish_announcement(tms_push_shared_t *s)
{
    char body[64];
    int n;
    if (s->announcing || s->stopping || !s->publish || !s->bus)
        return;
    atomic_store(&s->want_announce, 0);
    if (tms_push_subscribers(s) == 0)
        return;
    n = snprintf(body, sizeof(body), "{" ANNOUNCE_KEY "%s\"}", s->self_id);
    s->announcing = true;
    if (s->bus->publish(s->bus, TMS_PUSH_TOPIC, "", body, (size_t)n, on_announcement_sent, s) != 0)
        s->announcing = false; /* the next one is due in ANNOUNCE_MS */
    else
        s->announced_at = tms_mono_ms();
}

static void on_shared_wake(uv_async_t *a)
{
    tms_push_shared_t *s = a->data;
    if (atomic_load(&s->want_announce)) {
        if (!s->announced_at || tms_mono_ms() - s->announced_at >= ANNOUNCE_GAP_MS)
            publish_announcement(s);
        else
            atomic_store(&s->want_announce, 0); /* the timer's next one, in ANNOUNCE_MS */
    }
    if (atomic_load(&s->want_doorbell))
        publish_doorbell(s);
}

static void on_announce_timer(uv_timer_t *t)
{
    tms_push_shared_t *s = t->data;
    atomic_store(&s->want_announce, 1);
    publish_announcement(s);
}

/* An announcement from another process (its own are ignored): doorbells go out for
 * LISTEN_TTL_MS more; one skipped before it is rung now. */
static void heard_listener(tms_push_shared_t *s, const char *id, const char *end)
{
    bool known = listeners_known(s);
    uint64_t now = tms_mono_ms();
    bool ring = s->skipped_at && now - s->skipped_at <= s->lim.poll_ms;
    if ((size_t)(end - id) > SELF_ID_LEN && memcmp(id, s->self_id, SELF_ID_LEN) == 0 &&
        id[SELF_ID_LEN] == '"')
        return; /* our own */
    atomic_store(&s->listeners_until, now + LISTEN_TTL_MS);
    if (!known) {
        tms_log_info("push_listener_heard", "doorbells=on skipped=%s", ring ? "rung" : "none");
        if (ring && !s->stopping) {
            atomic_store(&s->want_doorbell, 1);
            publish_doorbell(s);
        }
    }
}

static void on_feed(void *owner, tms_msg_t *msg)
{
    tms_push_shared_t *s = owner;
    tms_delivery_t *d = (tms_delivery_t *)msg;
    const char *key;
    bool announcement;
    if (msg->kind == TMS_MSG_STOP || msg->op != TMS_EVENT_DELIVERY)
        return;
    key = d->payload ? memmem(d->payload, d->payload_len, ANNOUNCE_KEY, sizeof(ANNOUNCE_KEY) - 1)
                     : NULL;
    announcement = key != NULL;
    if (announcement)
        heard_listener(s, (const char *)key + sizeof(ANNOUNCE_KEY) - 1,
                       d->payload + d->payload_len);
    s->bus->ack(s->bus, &d, tms_ack_ok());
    if (announcement)
        return;
    tms_counter_add(s->doorbells_in, 1);
    if (!s->stopping)
        poke_hubs(s);
}

static double remote_listeners_gauge(void *arg)
{
    return listeners_known(arg) ? 1 : 0;
}

tms_push_shared_t *tms_push_shared_new(uv_loop_t *loop, const tms_push_limits_t *limits,
                                       tms_event_bus_t *bus, bool publish_doorbells)
{
    tms_push_shared_t *s = tms_new(tms_push_shared_t);
    pthread_once(&m.once, metrics_init);
    s->loop = loop;
    s->lim = *limits;
    if (!s->lim.max_subscribers)
        s->lim.max_subscribers = 10000;
    if (!s->lim.max_subscribers_per_user)
        s->lim.max_subscribers_per_user = 16;
    if (!s->lim.queue_bytes)
        s->lim.queue_bytes = 256 * 1024;
    if (!s->lim.heartbeat_ms)
        s->lim.heartbeat_ms = 15000;
    if (!s->lim.recheck_ms)
        s->lim.recheck_ms = 30000;
    if (!s->lim.poll_ms)
        s->lim.poll_ms = 1000;
    s->bus = bus;
    s->publish = publish_doorbells;
    pthread_mutex_init(&s->mu, NULL);
    uv_async_init(loop, &s->wake, on_shared_wake);
    s->wake.data = s;
    uv_unref((uv_handle_t *)&s->wake);
    uv_timer_init(loop, &s->announce_timer);
    s->announce_timer.data = s;
    s->open_handles = 2;
    /* Only has to differ between the processes on one bus; a pid may repeat across
     * hosts and containers, so random. */
    {
        unsigned char r[SELF_ID_LEN / 2];
        if (uv_random(NULL, NULL, r, sizeof(r), 0, NULL) == 0) {
            for (size_t i = 0; i < sizeof(r); i++)
                snprintf(s->self_id + 2 * i, 3, "%02x", r[i]);
        } else {
            snprintf(s->self_id, sizeof(s->self_id), "%08x%08x", (unsigned)getpid(),
                     (unsigned)uv_hrtime());
        }
    }
    s->doorbells_in = tms_metrics_counter("tms_push_doorbells_total",
                                          "push doorbells between processes", "dir=\"in\"");
    s->doorbells_out = tms_metrics_counter("tms_push_doorbells_total",
                                           "push doorbells between processes", "dir=\"out\"");
    tms_metrics_gauge_fn("tms_push_subscribers", "open task event streams (SSE and gRPC)", "",
                         subscribers_gauge, s);
    if (bus && bus->subscribe_all) {
        s->feed = tms_mailbox_new(loop, "push", 1024, on_feed, s);
        if (bus->subscribe_all(bus, TMS_PUSH_TOPIC, s->feed) != 0)
            tms_log_error("subscribe_failed", "topic=%s group=(every instance)", TMS_PUSH_TOPIC);
    }
    if (s->publish && s->bus) {
        tms_metrics_gauge_fn("tms_push_remote_listeners",
                             "1 while another process is known to have task event streams"
                             " (this one rings doorbells), else 0",
                             "", remote_listeners_gauge, s);
        uv_timer_start(&s->announce_timer, on_announce_timer, ANNOUNCE_MS, ANNOUNCE_MS);
        uv_unref((uv_handle_t *)&s->announce_timer);
    }
    return s;
}

void tms_push_poke(tms_push_shared_t *s)
{
    if (!s)
        return;
    poke_hubs(s);
    if (s->publish) {
        atomic_store(&s->want_doorbell, 1);
        uv_async_send(&s->wake);
    }
}

void tms_push_revoked(tms_push_shared_t *s, const char *user_id)
{
    if (!s || !user_id || !user_id[0])
        return;
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < s->nhubs; i++)
        hub_post_revoked(s->hubs[i], user_id);
    pthread_mutex_unlock(&s->mu);
}

size_t tms_push_subscribers(tms_push_shared_t *s)
{
    size_t n;
    pthread_mutex_lock(&s->mu);
    n = s->total;
    pthread_mutex_unlock(&s->mu);
    return n;
}

static size_t bucket_of(const char *user_id)
{
    size_t h = 5381;
    for (const char *p = user_id; *p; p++)
        h = h * 33 + (unsigned char)*p;
    return h % USER_BUCKETS;
}

enum { TAKEN, FULL_TOTAL, FULL_USER };

/* One more subscriber of user_id, within the bounds: TAKEN, or which bound refuses. */
static int shared_take(tms_push_shared_t *s, const char *user_id)
{
    user_count_t **slot = &s->users[bucket_of(user_id)], *u;
    int rc = TAKEN;
    pthread_mutex_lock(&s->mu);
    for (u = *slot; u && strcmp(u->user_id, user_id) != 0; u = u->next)
        ;
    if (s->total >= s->lim.max_subscribers) {
        tms_counter_add(m.refused_total, 1);
        rc = FULL_TOTAL;
    } else if (u && u->n >= s->lim.max_subscribers_per_user) {
        tms_counter_add(m.refused_user, 1);
        rc = FULL_USER;
    } else {
        if (!u) {
            u = tms_new(user_count_t);
            snprintf(u->user_id, sizeof(u->user_id), "%s", user_id);
            u->next = *slot;
            *slot = u;
        }
        u->n++;
        if (s->total++ == 0 && s->publish) {
            /* the first stream: other processes start ringing (publish_announcement) */
            atomic_store(&s->want_announce, 1);
            uv_async_send(&s->wake);
        }
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static void shared_release(tms_push_shared_t *s, const char *user_id)
{
    user_count_t **pp = &s->users[bucket_of(user_id)], *u;
    pthread_mutex_lock(&s->mu);
    for (; (u = *pp) != NULL; pp = &u->next) {
        if (strcmp(u->user_id, user_id) == 0) {
            if (--u->n == 0) {
                *pp = u->next;
                free(u);
            }
            s->total--;
            break;
        }
    }
    pthread_mutex_unlock(&s->mu);
}

static void shared_add_hub(tms_push_shared_t *s, tms_push_hub_t *hub)
{
    pthread_mutex_lock(&s->mu);
    if (s->nhubs == s->hubs_cap) {
        s->hubs_cap = s->hubs_cap ? s->hubs_cap * 2 : 4;
        s->hubs = tms_realloc(s->hubs, s->hubs_cap * sizeof(*s->hubs));
    }
    s->hubs[s->nhubs++] = hub;
    pthread_mutex_unlock(&s->mu);
}

static void shared_remove_hub(tms_push_shared_t *s, tms_push_hub_t *hub)
{
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < s->nhubs; i++) {
        if (s->hubs[i] == hub) {
            s->hubs[i] = s->hubs[--s->nhubs];
            break;
        }
    }
    pthread_mutex_unlock(&s->mu);
}

void tms_push_shared_stop(tms_push_shared_t *s, void (*cb)(void *arg), void *arg)
{
    s->stopping = true;
    s->stopped_cb = cb;
    s->stopped_arg = arg;
    uv_timer_stop(&s->announce_timer);
    check_stopped(s);
}

static void on_shared_closed(uv_handle_t *h)
{
    tms_push_shared_t *s = h->data;
    if (--s->open_handles > 0)
        return;
    pthread_mutex_destroy(&s->mu);
    for (int i = 0; i < USER_BUCKETS; i++) {
        while (s->users[i]) {
            user_count_t *u = s->users[i];
            s->users[i] = u->next;
            free(u);
        }
    }
    free(s->hubs);
    free(s);
}

void tms_push_shared_free(tms_push_shared_t **ps)
{
    tms_push_shared_t *s = *ps;
    if (!s)
        return;
    *ps = NULL;
    tms_metrics_drop_gauges_of(s);
    tms_mailbox_free(&s->feed);
    uv_close((uv_handle_t *)&s->wake, on_shared_closed);
    uv_close((uv_handle_t *)&s->announce_timer, on_shared_closed);
}

/* ---- one worker's hub ------------------------------------------------------------ */

typedef enum sub_state {
    SUB_WAIT = 1, /* for the hub's first read of the log */
    SUB_REPLAY,   /* reading what it missed */
    SUB_LIVE,
} sub_state_t;

struct tms_push_sub {
    tms_push_sub_t *prev, *next;
    tms_push_hub_t *hub;
    tms_push_sink_t *sink; /* NULL once ended or unsubscribed */
    sub_state_t state;
    bool reading; /* a replay read in flight: freed when it comes back */
    bool first_read, waiting_room;
    int64_t pos; /* the last event considered for it */
    bool has_since;
    int64_t since;
    char user_id[TMS_USER_ID_LEN + 1];
    int64_t token_version, expires_at_s;
    char assigned_to[TMS_USER_ID_LEN + 1];
    char status[16];
    int64_t task_id;
};

struct tms_push_hub {
    uv_loop_t *loop;
    tms_push_shared_t *shared;
    tms_mailbox_t *task, *auth, *mailbox;
    uv_async_t wake;
    uv_timer_t poll_timer, tick_timer, retry_timer;
    int handles;
    tms_push_sub_t *subs;
    size_t nsubs;
    int64_t last; /* the last event delivered: everything up to it is settled */
    bool known;   /* last was read from the log */
    bool reading, again;
    uint64_t hole_since; /* uv_now when a hole after last was first seen; 0: none */
    size_t inflight;     /* reads and checks posted, not yet back */
    size_t checks;       /* of the current re-check round */
    uint64_t last_heartbeat, last_recheck;
    bool stopping, closing;
    void (*stopped_cb)(void *);
    void *stopped_arg;
};

static void hub_read(tms_push_hub_t *hub);
static void replay_next(tms_push_sub_t *sub);
static void maybe_stopped(tms_push_hub_t *hub);

static void hub_poke(tms_push_hub_t *hub)
{
    uv_async_send(&hub->wake);
}

typedef struct revoked_msg {
    tms_msg_t msg;
    char user_id[TMS_USER_ID_LEN + 1];
} revoked_msg_t;

static void free_msg(tms_msg_t *msg)
{
    free(msg);
}

static void hub_post_revoked(tms_push_hub_t *hub, const char *user_id)
{
    revoked_msg_t *r = tms_new(revoked_msg_t);
    tms_msg_t *msg = &r->msg;
    msg->kind = TMS_MSG_REQUEST;
    msg->op = MSG_REVOKED;
    msg->free_fn = free_msg;
    snprintf(r->user_id, sizeof(r->user_id), "%s", user_id);
    if (tms_mailbox_post(hub->mailbox, &msg) != 0)
        free(r); /* full: the next round re-checks */
}

/* ---- subscribers ---- */

static void sub_unlink(tms_push_sub_t *sub)
{
    tms_push_hub_t *hub = sub->hub;
    if (sub->prev)
        sub->prev->next = sub->next;
    else
        hub->subs = sub->next;
    if (sub->next)
        sub->next->prev = sub->prev;
    sub->prev = sub->next = NULL;
    hub->nsubs--;
    shared_release(hub->shared, sub->user_id);
}

/* Forget sub (its sink is told, when told is set); freed now or when its read is back. */
static void sub_drop(tms_push_sub_t *sub, bool told, tms_status_t code, const char *message)
{
    tms_push_sink_t *sink = sub->sink;
    if (!sink)
        return;
    sub->sink = NULL;
    sub_unlink(sub);
    if (told)
        sink->end(sink, code, message);
    if (!sub->reading)
        free(sub);
}

static void sub_end(tms_push_sub_t *sub, tms_status_t code, const char *message)
{
    sub_drop(sub, true, code, message);
}

/* Hands e to sub's sink; ends sub when its queue is full. 0, or -1 when ended. */
static int sub_send(tms_push_sub_t *sub, tms_push_event_t *e)
{
    if (sub->sink->send(sub->sink, e) != 0) {
        tms_counter_add(m.slow, 1);
        tms_log_info("push_slow_consumer", "user=%s queued_bytes=%zu bound=%zu", sub->user_id,
                     sub->sink->queued(sub->sink), sub->sink->queue_bytes);
        sub_end(sub, TMS_RESOURCE_EXHAUSTED,
                "slow consumer: more than push.queue_bytes of events not taken; resume with the "
                "last event id");
        return -1;
    }
    tms_counter_add(m.pushed, 1);
    return 0;
}

static bool matches(const tms_push_sub_t *sub, const tms_task_event_t *e)
{
    if (sub->task_id && e->task.id != sub->task_id)
        return false;
    if (sub->assigned_to[0] && strcmp(e->task.assigned_to, sub->assigned_to) != 0 &&
        strcmp(e->prev_assigned_to, sub->assigned_to) != 0)
        return false;
    if (sub->status[0] && strcmp(e->task.status, sub->status) != 0 &&
        strcmp(e->prev_status, sub->status) != 0)
        return false;
    return true;
}

static tms_api_call_t *read_call(tms_push_hub_t *hub, int64_t after, int64_t upto, int limit)
{
    tms_api_call_t *call = tms_api_call_new(TMS_API_TASK_EVENTS);
    call->principal.service = true;
    call->has_since = true;
    call->since = after;
    call->upto = upto;
    call->limit = limit;
    call->deadline_ms = uv_now(hub->loop) + READ_TIMEOUT_MS;
    snprintf(call->request_id, sizeof(call->request_id), "push");
    return call;
}

static int post(tms_push_hub_t *hub, tms_mailbox_t *to, tms_api_call_t **pcall, tms_cont_fn cont,
                void *ctx)
{
    tms_msg_t *msg = &(*pcall)->msg;
    msg->kind = TMS_MSG_REQUEST;
    msg->op = TMS_STAGE_EXECUTE;
    msg->reply_to = hub->mailbox;
    msg->cont = cont;
    msg->ctx = ctx;
    if (!to || tms_mailbox_post(to, &msg) != 0) {
        tms_api_call_free(pcall);
        return -1;
    }
    *pcall = NULL;
    hub->inflight++;
    return 0;
}

/* A reset event: the client must list again; its id is where the stream goes on. */
static void send_reset(tms_push_sub_t *sub, int64_t seq)
{
    tms_task_event_t ev = {.seq = seq, .type = TMS_TASK_EVENT_RESET, .at_ms = tms_now_ms()};
    tms_push_event_t *e = event_new(&ev);
    sub->pos = seq;
    sub->state = SUB_LIVE;
    tms_counter_add(m.reset, 1);
    sub_send(sub, e);
    tms_push_event_unref(&e);
}

static void on_replay(tms_msg_t *msg)
{
    tms_api_call_t *call = (tms_api_call_t *)msg;
    tms_push_sub_t *sub = msg->ctx;
    tms_push_hub_t *hub = sub->hub;
    hub->inflight--;
    sub->reading = false;
    if (!sub->sink) {
        free(sub);
        goto out;
    }
    if (call->err.code != TMS_OK) {
        tms_counter_add(m.read_failed, 1);
        sub_end(sub, TMS_UNAVAILABLE, "task events unavailable, retry later");
        goto out;
    }
    if (sub->first_read) {
        sub->first_read = false;
        /* Outside the window: purged since, or an id this log never had. */
        if ((call->first_seq && sub->since + 1 < call->first_seq) || sub->since > call->last_seq) {
            send_reset(sub, hub->last);
            goto out;
        }
        tms_counter_add(m.resumed, 1);
    }
    for (size_t i = 0; i < call->nevents; i++) {
        tms_push_event_t *e;
        if (call->events[i].seq <= sub->pos)
            continue;
        sub->pos = call->events[i].seq;
        e = event_new(&call->events[i]);
        int rc = sub_send(sub, e);
        tms_push_event_unref(&e);
        if (rc != 0)
            goto out;
    }
    if (call->nevents < TMS_PUSH_PAGE && sub->pos < call->upto)
        sub->pos = call->upto; /* nothing else up to there matches */
    replay_next(sub);
out:
    tms_api_call_free(&call);
    maybe_stopped(hub);
}

static void arm_retry(tms_push_hub_t *hub, uint64_t ms);

/* The next page of what sub missed, once its client took half its queue; live when
 * it has caught up with the hub. */
static void replay_next(tms_push_sub_t *sub)
{
    tms_push_hub_t *hub = sub->hub;
    tms_api_call_t *call;
    if (sub->reading || !sub->sink)
        return;
    if (!sub->first_read && sub->pos >= hub->last) {
        sub->state = SUB_LIVE;
        return;
    }
    if (sub->sink->queued(sub->sink) > sub->sink->queue_bytes / 2) {
        sub->waiting_room = true;
        arm_retry(hub, ROOM_RETRY_MS);
        return;
    }
    sub->waiting_room = false;
    /* A first read from at or past where the hub stands only checks the window. */
    call = read_call(hub, sub->pos, hub->last, sub->pos >= hub->last ? 0 : TMS_PUSH_PAGE);
    if (sub->assigned_to[0])
        call->assigned_to = tms_api_call_strdup(call, sub->assigned_to);
    if (sub->status[0])
        call->status = tms_api_call_strdup(call, sub->status);
    call->task_id = sub->task_id;
    if (post(hub, hub->task, &call, on_replay, sub) != 0) {
        sub_end(sub, TMS_UNAVAILABLE, "server overloaded, retry later");
        return;
    }
    sub->reading = true;
}

/* The hub knows where the log stands: sub starts there, or replays from since. */
static void sub_start(tms_push_sub_t *sub)
{
    tms_push_hub_t *hub = sub->hub;
    if (!sub->has_since || sub->since == hub->last) {
        sub->pos = sub->has_since ? sub->since : hub->last;
        sub->state = SUB_LIVE;
        if (sub->has_since)
            tms_counter_add(m.resumed, 1);
        return;
    }
    sub->state = SUB_REPLAY;
    sub->pos = sub->since;
    sub->first_read = true;
    replay_next(sub);
}

tms_push_sub_t *tms_push_subscribe(tms_push_hub_t *hub, const tms_api_call_t *call,
                                   tms_push_sink_t *sink, tms_error_t *err)
{
    tms_push_sub_t *sub;
    int rc;
    if (hub->stopping) {
        tms_error_set(err, TMS_UNAVAILABLE, "server shutting down");
        return NULL;
    }
    rc = shared_take(hub->shared, call->principal.user_id);
    if (rc != TAKEN) {
        if (rc == FULL_USER)
            tms_error_set(err, TMS_RESOURCE_EXHAUSTED,
                          "too many streams open for this user (push.max_subscribers_per_user "
                          "= %zu)",
                          hub->shared->lim.max_subscribers_per_user);
        else
            tms_error_set(err, TMS_RESOURCE_EXHAUSTED,
                          "too many streams open on this server (push.max_subscribers = %zu)",
                          hub->shared->lim.max_subscribers);
        return NULL;
    }
    sub = tms_new(tms_push_sub_t);
    sub->hub = hub;
    sub->sink = sink;
    sink->queue_bytes = hub->shared->lim.queue_bytes;
    sub->state = SUB_WAIT;
    snprintf(sub->user_id, sizeof(sub->user_id), "%s", call->principal.user_id);
    sub->token_version = call->user.token_version;
    sub->expires_at_s = call->principal.expires_at_s;
    snprintf(sub->assigned_to, sizeof(sub->assigned_to), "%s",
             call->assigned_to ? call->assigned_to : "");
    snprintf(sub->status, sizeof(sub->status), "%s", call->status ? call->status : "");
    sub->task_id = call->task_id;
    sub->has_since = call->has_since;
    sub->since = call->since;
    sub->next = hub->subs;
    if (hub->subs)
        hub->subs->prev = sub;
    hub->subs = sub;
    hub->nsubs++;
    if (hub->known)
        sub_start(sub);
    else
        hub_read(hub);
    return sub;
}

void tms_push_unsubscribe(tms_push_sub_t **psub)
{
    tms_push_sub_t *sub = *psub;
    if (!sub)
        return;
    *psub = NULL;
    sub_drop(sub, false, TMS_OK, NULL);
}

/* ---- the log ---- */

/* One event after last, to every live subscriber whose filters it matches. */
static void deliver(tms_push_hub_t *hub, const tms_task_event_t *ev)
{
    tms_push_event_t *e = NULL;
    tms_push_sub_t *sub, *next;
    hub->last = ev->seq;
    for (sub = hub->subs; sub; sub = next) {
        next = sub->next;
        if (sub->state != SUB_LIVE || ev->seq <= sub->pos)
            continue;
        sub->pos = ev->seq;
        if (!matches(sub, ev))
            continue;
        if (!e)
            e = event_new(ev);
        sub_send(sub, e);
    }
    tms_push_event_unref(&e);
}

static void on_read(tms_msg_t *msg)
{
    tms_api_call_t *call = (tms_api_call_t *)msg;
    tms_push_hub_t *hub = msg->ctx;
    uint64_t now = uv_now(hub->loop);
    bool more = false, hole = false;
    hub->inflight--;
    hub->reading = false;
    if (hub->stopping)
        goto out;
    if (call->err.code != TMS_OK) {
        tms_counter_add(m.read_failed, 1);
        tms_log_debug("push_read_failed", "code=%s", tms_status_name(call->err.code));
        goto out; /* the poll tries again */
    }
    if (!hub->known) {
        hub->known = true;
        hub->last = call->last_seq;
        for (tms_push_sub_t *sub = hub->subs, *next; sub; sub = next) {
            next = sub->next;
            if (sub->state == SUB_WAIT)
                sub_start(sub);
        }
        goto out;
    }
    for (size_t i = 0; i < call->nevents; i++) {
        const tms_task_event_t *ev = &call->events[i];
        if (ev->seq <= hub->last)
            continue;
        /* A hole before the log's first event was purged; any other may be a
         * transaction not yet committed (PostgreSQL): wait for it a while. */
        if (ev->seq != hub->last + 1 && ev->seq != call->first_seq) {
            if (!hub->hole_since)
                hub->hole_since = now ? now : 1;
            if (now - hub->hole_since < TMS_PUSH_GAP_WAIT_MS) {
                hole = true;
                break;
            }
            tms_counter_add(m.gaps, (uint64_t)(ev->seq - hub->last - 1));
            tms_log_warn("push_gap", "after=%lld next=%lld waited_ms=%llu", (long long)hub->last,
                         (long long)ev->seq, (unsigned long long)(now - hub->hole_since));
        }
        hub->hole_since = 0;
        deliver(hub, ev);
    }
    more = !hole && call->nevents == TMS_PUSH_PAGE;
out:
    tms_api_call_free(&call);
    if (hub->stopping) {
        maybe_stopped(hub);
        return;
    }
    if (hole)
        arm_retry(hub, HOLE_RETRY_MS);
    else if (more || hub->again)
        hub_read(hub);
}

/* Reads the log after last (at first: only where it stands). Coalesced. A hub without
 * subscribers reads nothing (no load on the task store or its peer, whose breaker
 * failed reads would trip while it starts) and forgets where the log stands: the next
 * subscriber's read learns it afresh. */
static void hub_read(tms_push_hub_t *hub)
{
    tms_api_call_t *call;
    if (hub->stopping)
        return;
    if (hub->nsubs == 0 && !hub->reading) {
        hub->known = false;
        return;
    }
    if (hub->reading) {
        hub->again = true;
        return;
    }
    hub->again = false;
    call = read_call(hub, hub->last, 0, hub->known ? TMS_PUSH_PAGE : 0);
    if (post(hub, hub->task, &call, on_read, hub) != 0)
        return; /* the poll tries again */
    hub->reading = true;
}

static void on_wake(uv_async_t *a)
{
    hub_read(a->data);
}

static void on_poll(uv_timer_t *t)
{
    hub_read(t->data);
}

/* A hole that may have filled, and replays that wait for room. */
static void on_retry(uv_timer_t *t)
{
    tms_push_hub_t *hub = t->data;
    if (hub->stopping)
        return;
    if (hub->hole_since)
        hub_read(hub);
    for (tms_push_sub_t *sub = hub->subs, *next; sub; sub = next) {
        next = sub->next;
        if (sub->waiting_room)
            replay_next(sub);
    }
}

static void arm_retry(tms_push_hub_t *hub, uint64_t ms)
{
    if (!uv_is_active((uv_handle_t *)&hub->retry_timer) && !hub->stopping)
        uv_timer_start(&hub->retry_timer, on_retry, ms, 0);
}

/* ---- token re-checks ---- */

static void on_check(tms_msg_t *msg)
{
    tms_api_call_t *call = (tms_api_call_t *)msg;
    tms_push_hub_t *hub = msg->ctx;
    bool gone = call->err.code == TMS_NOT_FOUND, ok = call->err.code == TMS_OK;
    hub->inflight--;
    if (hub->checks)
        hub->checks--;
    for (tms_push_sub_t *sub = hub->subs, *next; sub && (gone || ok); sub = next) {
        next = sub->next;
        if (strcmp(sub->user_id, call->target_id) != 0)
            continue;
        if (gone || sub->token_version != call->user.token_version) {
            tms_counter_add(m.revoked, 1);
            tms_log_info("push_revoked", "user=%s why=%s", sub->user_id,
                         gone ? "user_deleted" : "token_revoked");
            sub_end(sub, TMS_UNAUTHENTICATED, gone ? "user no longer exists" : "token revoked");
        }
    }
    tms_api_call_free(&call);
    maybe_stopped(hub);
}

static void check_user(tms_push_hub_t *hub, const char *user_id, bool in_round)
{
    tms_api_call_t *call = tms_api_call_new(TMS_API_USER_INFO);
    call->principal.service = true;
    snprintf(call->target_id, sizeof(call->target_id), "%s", user_id);
    snprintf(call->request_id, sizeof(call->request_id), "push");
    call->deadline_ms = uv_now(hub->loop) + READ_TIMEOUT_MS;
    if (post(hub, hub->auth, &call, on_check, hub) == 0 && in_round)
        hub->checks++;
}

static int cmp_user(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* One check per user with a subscriber here. */
static void recheck_round(tms_push_hub_t *hub)
{
    const char **ids;
    size_t n = 0;
    if (!hub->nsubs || hub->checks)
        return;
    ids = tms_calloc(hub->nsubs, sizeof(*ids));
    for (tms_push_sub_t *sub = hub->subs; sub && n < hub->nsubs; sub = sub->next)
        ids[n++] = sub->user_id;
    qsort(ids, n, sizeof(*ids), cmp_user);
    for (size_t i = 0; i < n; i++) {
        if (i == 0 || strcmp(ids[i], ids[i - 1]) != 0) {
            char id[TMS_USER_ID_LEN + 1];
            snprintf(id, sizeof(id), "%s", ids[i]); /* ids may go as checks end streams */
            check_user(hub, id, true);
        }
    }
    free(ids);
}

static void on_tick(uv_timer_t *t)
{
    tms_push_hub_t *hub = t->data;
    uint64_t now = uv_now(hub->loop);
    int64_t now_s = tms_now_ms() / 1000;
    bool beat = now - hub->last_heartbeat >= hub->shared->lim.heartbeat_ms;
    if (hub->stopping)
        return;
    if (beat)
        hub->last_heartbeat = now;
    for (tms_push_sub_t *sub = hub->subs, *next; sub; sub = next) {
        next = sub->next;
        if (sub->expires_at_s && now_s >= sub->expires_at_s) {
            tms_counter_add(m.expired, 1);
            sub_end(sub, TMS_UNAUTHENTICATED, "token expired");
            continue;
        }
        if (beat && sub->sink->heartbeat)
            sub->sink->heartbeat(sub->sink);
    }
    if (now - hub->last_recheck >= hub->shared->lim.recheck_ms) {
        hub->last_recheck = now;
        recheck_round(hub);
    }
}

static void on_hub_message(void *owner, tms_msg_t *msg)
{
    tms_push_hub_t *hub = owner;
    if (msg->op == MSG_REVOKED && !hub->stopping) {
        const char *user = ((revoked_msg_t *)msg)->user_id;
        for (tms_push_sub_t *sub = hub->subs; sub; sub = sub->next) {
            if (strcmp(sub->user_id, user) == 0) {
                check_user(hub, user, false);
                break;
            }
        }
    }
    if (msg->free_fn)
        msg->free_fn(msg);
}

tms_push_hub_t *tms_push_hub_start(uv_loop_t *loop, tms_push_shared_t *shared, tms_mailbox_t *task,
                                   tms_mailbox_t *auth)
{
    tms_push_hub_t *hub = tms_new(tms_push_hub_t);
    hub->loop = loop;
    hub->shared = shared;
    hub->task = task;
    hub->auth = auth;
    hub->mailbox = tms_mailbox_new(loop, "push_hub", HUB_MAILBOX, on_hub_message, hub);
    uv_async_init(loop, &hub->wake, on_wake);
    hub->wake.data = hub;
    uv_unref((uv_handle_t *)&hub->wake);
    uv_timer_init(loop, &hub->poll_timer);
    uv_timer_init(loop, &hub->tick_timer);
    uv_timer_init(loop, &hub->retry_timer);
    hub->poll_timer.data = hub->tick_timer.data = hub->retry_timer.data = hub;
    hub->handles = 4;
    hub->last_heartbeat = hub->last_recheck = uv_now(loop);
    uv_timer_start(&hub->poll_timer, on_poll, 0, shared->lim.poll_ms);
    uv_timer_start(&hub->tick_timer, on_tick, TICK_MS, TICK_MS);
    uv_unref((uv_handle_t *)&hub->poll_timer);
    uv_unref((uv_handle_t *)&hub->tick_timer);
    uv_unref((uv_handle_t *)&hub->retry_timer);
    shared_add_hub(shared, hub);
    return hub;
}

static void on_hub_closed(uv_handle_t *h)
{
    tms_push_hub_t *hub = h->data;
    if (--hub->handles == 0 && hub->stopped_cb)
        hub->stopped_cb(hub->stopped_arg);
}

static void maybe_stopped(tms_push_hub_t *hub)
{
    if (!hub->stopping || hub->inflight || hub->closing)
        return;
    hub->closing = true;
    uv_close((uv_handle_t *)&hub->wake, on_hub_closed);
    uv_close((uv_handle_t *)&hub->poll_timer, on_hub_closed);
    uv_close((uv_handle_t *)&hub->tick_timer, on_hub_closed);
    uv_close((uv_handle_t *)&hub->retry_timer, on_hub_closed);
}

void tms_push_hub_stop(tms_push_hub_t *hub, void (*cb)(void *arg), void *arg)
{
    if (hub->stopping)
        return;
    hub->stopping = true;
    hub->stopped_cb = cb;
    hub->stopped_arg = arg;
    shared_remove_hub(hub->shared, hub);
    while (hub->subs)
        sub_end(hub->subs, TMS_UNAVAILABLE, "server shutting down");
    uv_timer_stop(&hub->poll_timer);
    uv_timer_stop(&hub->tick_timer);
    uv_timer_stop(&hub->retry_timer);
    maybe_stopped(hub);
}

void tms_push_hub_free(tms_push_hub_t **phub)
{
    tms_push_hub_t *hub = *phub;
    if (!hub)
        return;
    *phub = NULL;
    tms_mailbox_free(&hub->mailbox);
    free(hub);
}
