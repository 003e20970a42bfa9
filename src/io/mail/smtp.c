/* SMTP mailer on libcurl's multi socket API. Everything runs on the loop: curl asks
 * for socket interest through on_curl_socket (one uv_poll per socket) and for a
 * wake-up through on_curl_timer (one uv_timer); both feed curl_multi_socket_action,
 * and finished transfers are collected by collect(). No curl call blocks: name
 * resolution uses curl's threaded resolver.
 *
 * A mail's life: submit renders it (header injection is refused there) and queues a
 * send; pump starts sends while fewer than max_concurrent are in flight and the
 * circuit breaker allows; the multi handle keeps up to max_concurrent connections
 * and reuses them. Outcomes:
 *   250 accepted       -> OK, the event id joins the sent-log of this process;
 *   5xx to the mail    -> dead-letter file (on the worker pool), then
 *                         FAILED_PRECONDITION: the notifier records the event as
 *                         handled, nothing retries it;
 *   4xx, 5xx to the session (auth, greeting, sender), connect error, timeout
 *                         (transient) -> back off with full jitter and try
 *                         again, up to retry_attempts; then UNAVAILABLE, and the
 *                         notifier leaves the event pending for redelivery.
 * While the breaker is open, mails come back UNAVAILABLE without a connection
 * attempt (so the events stay pending instead of being lost or dead-lettered).
 *
 * Delivery guarantee: at most one copy per event per process lifetime once the
 * server accepted it (the sent-log below, and the notifier's inbox across
 * restarts); a crash, or a lost 250 reply (timeout after the server accepted the
 * data), between acceptance and the inbox record can resend once; the copy carries
 * the same Message-ID (<event_id@domain>), so receivers can drop it. */
#include "io/mail/smtp.h"

#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/breaker.h"
#include "core/log.h"
#include "core/mail_format.h"
#include "core/metrics.h"
#include "core/queue.h"
#include "io/mail/dlq.h"

/* Accepted event ids remembered: a redelivery after a failed inbox record (store
 * down) is answered from here instead of mailing again. O(n) lookup per submit;
 * fine for 1024 short strings next to an SMTP round trip. */
#define SENT_LOG 1024

typedef struct smtp smtp_t;

typedef struct send {
    struct send *next, *prev; /* ready queue or retry list (next), or active list */
    smtp_t *m;
    tms_mail_t *mail;
    char *data; /* the rendered message */
    size_t len, off;
    int attempt;
    uint64_t due_ms; /* retry list: when to go back to the ready queue */
    uint64_t started_ns;
    CURL *easy;
    struct curl_slist *rcpt;
    char errbuf[CURL_ERROR_SIZE];
} send_t;

typedef struct sock {
    uv_poll_t poll; /* freed in its close callback */
    struct sock *prev, *next;
    smtp_t *m;
    curl_socket_t fd;
} sock_t;

struct smtp {
    tms_mailer_t base; /* first member */
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t curl_timer, retry_timer;
    int handles_open; /* timers and polls not yet closed; freed at 0 once closing */
    bool stopping, closing, close_asked;
    tms_port_closed_fn closed_cb; /* the port's close: runs once the mailer is freed */
    void *closed_ctx;
    char *url, *from, *domain, *dlq_dir, *ca_file;
    tms_smtp_options_t opt; /* strings point at the copies above */
    tms_workpool_t *pool;
    tms_breaker_t breaker;
    int64_t down_since_ms; /* the breaker left closed */
    int probes;            /* half-open probes since */
    send_t *ready_head, *ready_tail;
    send_t *retry;       /* sorted by due_ms */
    send_t *active_list; /* transfers in curl */
    sock_t *socks;
    size_t held; /* mails owned: queued, active, backing off */
    /* held and breaker.state for the gauges, which any worker's /metrics reads */
    atomic_size_t held_gauge;
    atomic_int state_gauge;
    int active;
    uint64_t rng;
    char sent_log[SENT_LOG][37];
    int sent_pos;
    tms_counter_t *accepted, *transient, *permanent, *retries, *dead_letters, *dlq_failed,
        *short_circuited, *duplicates, *to_open, *to_half_open, *to_closed, *connects;
    tms_histogram_t *duration;
};

static void pump(smtp_t *m);
static void held_less(smtp_t *m);

/* ---- small helpers ---------------------------------------------------------- */

static uint32_t next_random(smtp_t *m)
{
    /* xorshift64*: jitter only needs to spread clients apart, not be secret. */
    m->rng ^= m->rng >> 12;
    m->rng ^= m->rng << 25;
    m->rng ^= m->rng >> 27;
    return (uint32_t)((m->rng * 2685821657736338717ull) >> 32);
}

static int64_t now_ms(smtp_t *m)
{
    return (int64_t)uv_now(m->loop);
}

static void sent_log_add(smtp_t *m, const char *event_id)
{
    snprintf(m->sent_log[m->sent_pos], sizeof(m->sent_log[0]), "%s", event_id);
    m->sent_pos = (m->sent_pos + 1) % SENT_LOG;
}

static bool sent_log_has(smtp_t *m, const char *event_id)
{
    for (int i = 0; i < SENT_LOG; i++) {
        if (m->sent_log[i][0] && strcmp(m->sent_log[i], event_id) == 0)
            return true;
    }
    return false;
}

static double breaker_gauge(void *arg)
{
    return (double)atomic_load_explicit(&((smtp_t *)arg)->state_gauge, memory_order_relaxed);
}

static double held_gauge(void *arg)
{
    return (double)atomic_load_explicit(&((smtp_t *)arg)->held_gauge, memory_order_relaxed);
}

/* Logs and counts a breaker transition once, whatever caused it. */
static void breaker_moved(smtp_t *m, tms_breaker_state_t from)
{
    tms_breaker_state_t to = m->breaker.state;
    atomic_store_explicit(&m->state_gauge, (int)to, memory_order_relaxed);
    if (to == from)
        return;
    tms_counter_add(to == TMS_BREAKER_OPEN        ? m->to_open
                    : to == TMS_BREAKER_HALF_OPEN ? m->to_half_open
                                                  : m->to_closed,
                    1);
    /* An outage logs two lines, when it starts and when it ends; the probes between
     * (open -> half-open -> open, once per cool-down) are debug lines. */
    if (from == TMS_BREAKER_CLOSED) {
        m->down_since_ms = now_ms(m);
        m->probes = 0;
        tms_log_warn("mail_breaker", "from=%s to=open window=%d cooldown_ms=%" PRId64,
                     tms_breaker_state_name(from), m->breaker.window, m->breaker.cooldown_ms);
    } else if (to == TMS_BREAKER_CLOSED) {
        tms_log_info("mail_breaker", "from=%s to=closed down_ms=%" PRId64 " probes=%d",
                     tms_breaker_state_name(from), now_ms(m) - m->down_since_ms, m->probes);
    } else {
        if (to == TMS_BREAKER_HALF_OPEN)
            m->probes++;
        tms_log_debug("mail_breaker", "from=%s to=%s", tms_breaker_state_name(from),
                      tms_breaker_state_name(to));
    }
}

/* ---- finishing a mail --------------------------------------------------------- */

static void send_free(send_t *s)
{
    if (s->easy)
        curl_easy_cleanup(s->easy);
    curl_slist_free_all(s->rcpt);
    free(s->data);
    free(s);
}

/* The mail goes back to its sender (the notifier) through its mailbox, never by a
 * direct call: finish runs inside curl's and libuv's callbacks. */
static void reply(tms_mail_t *mail, tms_status_t code, const char *why)
{
    mail->err.code = TMS_OK;
    if (code != TMS_OK)
        tms_error_set(&mail->err, code, "%s", why);
    mail->msg.next = NULL;
    tms_mailbox_reply(&mail->msg);
}

/* How long the breaker still refuses sends; 0 when it does not. */
static uint64_t breaker_wait(smtp_t *m)
{
    int64_t left;
    if (m->breaker.state != TMS_BREAKER_OPEN)
        return 0;
    left = m->breaker.opened_at_ms + m->breaker.cooldown_ms - now_ms(m);
    return left > 0 ? (uint64_t)left : 0;
}

static void finish(smtp_t *m, send_t *s, tms_status_t code, const char *why)
{
    if (code == TMS_UNAVAILABLE)
        s->mail->retry_after_ms = breaker_wait(m);
    reply(s->mail, code, why);
    s->mail = NULL;
    send_free(s);
    held_less(m);
}

/* ---- dead letters (file write on the pool) --------------------------------- */

typedef struct dlq_job {
    tms_job_t job; /* first member */
    tms_mail_t *mail;
    char *dir, *data;
    size_t len;
    char reason[256];
    int rc, saved_errno;
    tms_counter_t *written, *failed; /* registry-owned; the mailer may be gone */
} dlq_job_t;

static void run_dlq(tms_job_t *job)
{
    dlq_job_t *j = (dlq_job_t *)job;
    j->rc = tms_mail_dlq_write(j->dir, j->mail->event_id, j->reason, j->data, j->len);
    j->saved_errno = errno;
}

static void dlq_job_free(dlq_job_t *j)
{
    free(j->dir);
    free(j->data);
    free(j);
}

/* On the notifier's loop (the job came back to the mail's mailbox). */
static void on_dlq_written(tms_msg_t *msg)
{
    dlq_job_t *j = (dlq_job_t *)msg;
    tms_mail_t *mail = j->mail;
    if (j->rc == 0) {
        tms_counter_add(j->written, 1);
        tms_log_error("mail_dead_letter", "event_id=%s dir=%s reason=\"%s\"", mail->event_id,
                      j->dir, j->reason);
        reply(mail, TMS_FAILED_PRECONDITION, j->reason); /* the server's reply */
    } else {
        /* Left pending: the redelivery meets the same 5xx and tries the write again. */
        tms_counter_add(j->failed, 1);
        tms_log_error("mail_dead_letter_failed", "event_id=%s dir=%s errno=%d error=\"%s\"",
                      mail->event_id, j->dir, j->saved_errno, strerror(j->saved_errno));
        reply(mail, TMS_UNAVAILABLE, "dead letter not written");
    }
    dlq_job_free(j);
}

static void on_dlq_dropped(tms_msg_t *msg)
{
    dlq_job_t *j = (dlq_job_t *)msg;
    tms_mail_t *mail = j->mail;
    if (mail->msg.free_fn)
        mail->msg.free_fn(&mail->msg);
    else
        tms_mail_free(&mail);
    dlq_job_free(j);
}

static void dead_letter(smtp_t *m, send_t *s, long code)
{
    dlq_job_t *j = tms_new(dlq_job_t);
    tms_job_t *job = &j->job;
    /* The server's text is the best reason; curl's error buffer carries it. */
    snprintf(j->reason, sizeof(j->reason), "%ld %.200s", code,
             s->errbuf[0] ? s->errbuf : "rejected");
    j->mail = s->mail;
    j->dir = tms_strdup(m->dlq_dir);
    j->data = s->data;
    j->len = s->len;
    j->written = m->dead_letters;
    j->failed = m->dlq_failed;
    job->run = run_dlq;
    job->msg.reply_to = s->mail->msg.reply_to;
    job->msg.cont = on_dlq_written;
    job->msg.ctx = j;
    job->msg.free_fn = on_dlq_dropped;
    if (tms_workpool_submit(m->pool, &job) != 0) {
        j->data = NULL; /* still s's */
        dlq_job_free(j);
        tms_counter_add(m->dlq_failed, 1);
        finish(m, s, TMS_UNAVAILABLE, "dead-letter pool full");
        return;
    }
    s->data = NULL;
    s->mail = NULL;
    send_free(s);
    held_less(m);
}

/* ---- retries ------------------------------------------------------------------ */

static void enqueue(smtp_t *m, send_t *s)
{
    TMS_FIFO_APPEND(m->ready_head, m->ready_tail, s, next);
}

static void on_retry_due(uv_timer_t *t);

static void arm_retry_timer(smtp_t *m)
{
    uint64_t now = uv_now(m->loop);
    if (!m->retry) {
        uv_timer_stop(&m->retry_timer);
        return;
    }
    uv_timer_start(&m->retry_timer, on_retry_due,
                   m->retry->due_ms > now ? m->retry->due_ms - now : 0, 0);
}

/* Insert sorted by due time: O(mails backing off); they are at most queue_capacity. */
static void schedule_retry(smtp_t *m, send_t *s, int64_t delay_ms)
{
    send_t **p = &m->retry;
    s->due_ms = uv_now(m->loop) + (uint64_t)delay_ms;
    while (*p && (*p)->due_ms <= s->due_ms)
        p = &(*p)->next;
    s->next = *p;
    *p = s;
    arm_retry_timer(m);
}

static void on_retry_due(uv_timer_t *t)
{
    smtp_t *m = t->data;
    uint64_t now = uv_now(m->loop);
    while (m->retry && m->retry->due_ms <= now) {
        send_t *s = m->retry;
        m->retry = s->next;
        enqueue(m, s);
    }
    arm_retry_timer(m);
    pump(m);
}

/* ---- one attempt ---------------------------------------------------------------- */

static size_t on_read(char *buf, size_t size, size_t nitems, void *arg)
{
    send_t *s = arg;
    size_t n = size * nitems, left = s->len - s->off;
    if (n > left)
        n = left;
    memcpy(buf, s->data + s->off, n);
    s->off += n;
    return n;
}

static bool url_has_credentials(const char *url)
{
    CURLU *u = curl_url();
    char *part = NULL;
    bool yes = false;
    if (!u)
        tms_oom(__FILE__, __LINE__);
    if (curl_url_set(u, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME) == CURLUE_OK) {
        yes = curl_url_get(u, CURLUPART_USER, &part, 0) == CURLUE_OK && part && *part;
        curl_free(part);
        part = NULL;
        if (!yes)
            yes = curl_url_get(u, CURLUPART_PASSWORD, &part, 0) == CURLUE_OK && part && *part;
        curl_free(part);
    } else {
        /* Unparsable here (curl will refuse it too): assume the worst. */
        yes = strchr(url, '@') != NULL;
    }
    curl_url_cleanup(u);
    return yes;
}

const char *tms_smtp_starttls_mode(const char *url, const char *starttls)
{
    if (strcmp(starttls, "off") == 0)
        return "off";
    if (strcmp(starttls, "require") == 0)
        return "require";
    if (strcmp(starttls, "auto") == 0)
        return url_has_credentials(url) ? "require" : "try";
    return "try";
}

/* Options shared by the loop's sends and the CLI's blocking replay. */
static struct curl_slist *setup_easy(CURL *e, const tms_smtp_options_t *opt, const char *to,
                                     char *errbuf)
{
    char addr[TMS_EMAIL_MAX + 3];
    struct curl_slist *rcpt;
    const char *mode = tms_smtp_starttls_mode(opt->url, opt->starttls);
    long tls = CURLUSESSL_TRY;
    if (strcmp(mode, "off") == 0)
        tls = CURLUSESSL_NONE;
    else if (strcmp(mode, "require") == 0)
        tls = CURLUSESSL_ALL;
    snprintf(addr, sizeof(addr), "<%s>", to);
    rcpt = curl_slist_append(NULL, addr);
    if (!rcpt)
        tms_oom(__FILE__, __LINE__);
    curl_easy_setopt(e, CURLOPT_URL, opt->url);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "smtp,smtps");
    snprintf(addr, sizeof(addr), "<%s>", opt->from);
    curl_easy_setopt(e, CURLOPT_MAIL_FROM, addr); /* copied by curl */
    curl_easy_setopt(e, CURLOPT_MAIL_RCPT, rcpt);
    curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(e, CURLOPT_USE_SSL, tls);
    if (opt->ca_file && *opt->ca_file)
        curl_easy_setopt(e, CURLOPT_CAINFO, opt->ca_file);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)opt->timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)opt->timeout_ms);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf);
    errbuf[0] = '\0';
    return rcpt;
}

static void start(smtp_t *m, send_t *s)
{
    s->attempt++;
    s->off = 0;
    s->easy = curl_easy_init();
    if (!s->easy)
        tms_oom(__FILE__, __LINE__);
    s->rcpt = setup_easy(s->easy, &m->opt, s->mail->to, s->errbuf);
    curl_easy_setopt(s->easy, CURLOPT_READFUNCTION, on_read);
    curl_easy_setopt(s->easy, CURLOPT_READDATA, s);
    curl_easy_setopt(s->easy, CURLOPT_INFILESIZE_LARGE, (curl_off_t)s->len);
    curl_easy_setopt(s->easy, CURLOPT_PRIVATE, s);
    s->started_ns = uv_hrtime();
    if (curl_multi_add_handle(m->multi, s->easy) == CURLM_OK) {
        m->active++;
        s->prev = NULL;
        s->next = m->active_list;
        if (m->active_list)
            m->active_list->prev = s;
        m->active_list = s;
    } else {
        /* Only on misuse or out of memory; give the mail back rather than lose it. */
        curl_easy_cleanup(s->easy);
        s->easy = NULL;
        curl_slist_free_all(s->rcpt);
        s->rcpt = NULL;
        finish(m, s, TMS_UNAVAILABLE, "curl refused the transfer");
    }
}

static void pump(smtp_t *m)
{
    while (m->ready_head && m->active < m->opt.max_concurrent) {
        send_t *s = m->ready_head;
        tms_breaker_state_t before = m->breaker.state;
        m->ready_head = s->next;
        if (!m->ready_head)
            m->ready_tail = NULL;
        bool allowed = !m->stopping && tms_breaker_allow(&m->breaker, now_ms(m));
        breaker_moved(m, before);
        if (!allowed) {
            tms_counter_add(m->short_circuited, 1);
            finish(m, s, TMS_UNAVAILABLE, m->stopping ? "mailer stopping" : "circuit open");
            continue;
        }
        start(m, s);
    }
}

static void unlink_active(smtp_t *m, send_t *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        m->active_list = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->next = s->prev = NULL;
    m->active--;
}

/* A 5xx to RCPT TO, DATA or the message itself is about this mail (unknown
 * recipient, content policy) and proves the server is up: dead letter, and a success
 * for the breaker. A 5xx anywhere else is about us or the server, not the mail (bad
 * credentials, greeting 554, a refused sender or STARTTLS): every mail would meet it,
 * so it counts as a failure and the events stay pending until someone fixes it.
 * curl reports RCPT/DATA refusals as CURLE_SEND_ERROR, "MAIL failed" names the
 * sender stage, and a refusal after the upload comes with every byte read. */
static bool is_permanent(const send_t *s, CURLcode res, long code)
{
    if (code < 500 || code > 599)
        return false;
    if (res == CURLE_SEND_ERROR)
        return strncmp(s->errbuf, "MAIL failed", 11) != 0;
    return (res == CURLE_WEIRD_SERVER_REPLY || res == CURLE_RECV_ERROR) && s->len > 0 &&
           s->off == s->len;
}

/* A transfer ended: classify, feed the breaker, and decide the mail's next step. */
static void on_done(smtp_t *m, send_t *s, CURLcode res)
{
    long code = 0, connects = 0;
    double took = (double)(uv_hrtime() - s->started_ns) / 1e9;
    tms_breaker_state_t before = m->breaker.state;
    bool permanent;
    curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_getinfo(s->easy, CURLINFO_NUM_CONNECTS, &connects);
    if (connects > 0)
        tms_counter_add(m->connects, (uint64_t)connects);
    curl_multi_remove_handle(m->multi, s->easy);
    curl_easy_cleanup(s->easy);
    s->easy = NULL;
    curl_slist_free_all(s->rcpt);
    s->rcpt = NULL;
    unlink_active(m, s);
    tms_histogram_observe(m->duration, took);

    if (res == CURLE_OK) {
#ifdef TMS_FAULTS
        /* Test-only (never in release builds): die like kill -9 right after the
         * server accepted, before the notifier records the event: the crash window
         * of the delivery guarantee. */
        if (getenv("TMS_FAULT_SMTP_CRASH_AFTER_ACCEPT"))
            _exit(137);
#endif
        tms_breaker_record(&m->breaker, false, now_ms(m));
        breaker_moved(m, before);
        tms_counter_add(m->accepted, 1);
        sent_log_add(m, s->mail->event_id);
        finish(m, s, TMS_OK, "");
        return;
    }
    permanent = is_permanent(s, res, code);
    tms_breaker_record(&m->breaker, !permanent, now_ms(m));
    breaker_moved(m, before);
    /* A failed half-open probe is the outage going on: a debug line. */
    tms_log(before == TMS_BREAKER_HALF_OPEN && !permanent ? TMS_LOG_DEBUG : TMS_LOG_WARN,
            "mail_send_failed",
            "event_id=%s attempt=%d code=%ld curl=%d permanent=%d error=\"%s\"%s",
            s->mail->event_id, s->attempt, code, (int)res, permanent,
            s->errbuf[0] ? s->errbuf : curl_easy_strerror(res),
            res == CURLE_USE_SSL_FAILED
                ? " hint=\"the server offers no STARTTLS and mail.starttls requires it "
                  "(auto requires it when mail.url carries credentials, so they never go "
                  "in clear text); the mail stays pending\""
                : "");
    if (permanent) {
        tms_counter_add(m->permanent, 1);
        dead_letter(m, s, code);
        return;
    }
    tms_counter_add(m->transient, 1);
    if (m->stopping || s->attempt >= m->opt.retry_attempts ||
        m->breaker.state == TMS_BREAKER_OPEN) {
        finish(m, s, TMS_UNAVAILABLE, "smtp unavailable");
        return;
    }
    tms_counter_add(m->retries, 1);
    schedule_retry(
        m, s,
        tms_backoff_ms(s->attempt, m->opt.retry_base_ms, m->opt.retry_max_ms, next_random(m)));
}

static void collect(smtp_t *m)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(m->multi, &left)) != NULL) {
        send_t *s = NULL;
        if (msg->msg != CURLMSG_DONE)
            continue;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&s);
        on_done(m, s, msg->data.result);
    }
    pump(m);
}

/* ---- curl <-> libuv ------------------------------------------------------------ */

static void on_handle_closed(uv_handle_t *h);

static void on_poll(uv_poll_t *h, int status, int events)
{
    sock_t *sk = h->data;
    smtp_t *m = sk->m;
    int flags = 0, running;
    if (status < 0)
        flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    curl_multi_socket_action(m->multi, sk->fd, flags, &running);
    collect(m);
}

static void sock_close(smtp_t *m, sock_t *sk)
{
    if (sk->prev)
        sk->prev->next = sk->next;
    else
        m->socks = sk->next;
    if (sk->next)
        sk->next->prev = sk->prev;
    uv_close((uv_handle_t *)&sk->poll, on_handle_closed);
}

static int on_curl_socket(CURL *e, curl_socket_t fd, int what, void *userp, void *socketp)
{
    smtp_t *m = userp;
    sock_t *sk = socketp;
    int events = 0;
    if (what == CURL_POLL_REMOVE) {
        if (sk) {
            curl_multi_assign(m->multi, fd, NULL);
            sock_close(m, sk);
        }
        return 0;
    }
    if (!sk) {
        sk = tms_new(sock_t);
        sk->m = m;
        sk->fd = fd;
        if (uv_poll_init_socket(m->loop, &sk->poll, fd) != 0) {
            free(sk);
            return -1; /* curl fails this transfer */
        }
        sk->poll.data = sk;
        m->handles_open++;
        sk->next = m->socks;
        if (m->socks)
            m->socks->prev = sk;
        m->socks = sk;
        curl_multi_assign(m->multi, fd, sk);
    }
    if (what & CURL_POLL_IN)
        events |= UV_READABLE;
    if (what & CURL_POLL_OUT)
        events |= UV_WRITABLE;
    uv_poll_start(&sk->poll, events, on_poll);
    return 0;
}

static void on_curl_timeout(uv_timer_t *t)
{
    smtp_t *m = t->data;
    int running;
    curl_multi_socket_action(m->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    collect(m);
}

/* curl must not be called back into from here: the uv timer runs it later (0 ms is
 * the next loop iteration). */
static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp)
{
    smtp_t *m = userp;
    if (timeout_ms < 0)
        uv_timer_stop(&m->curl_timer);
    else
        uv_timer_start(&m->curl_timer, on_curl_timeout, (uint64_t)timeout_ms, 0);
    return 0;
}

/* ---- the port --------------------------------------------------------------------- */

static int submit(tms_mailer_t *self, tms_mail_t **pmail)
{
    smtp_t *m = (smtp_t *)self;
    tms_mail_t *mail = *pmail;
    send_t *s;
    char *data;
    size_t len;
    if (m->stopping)
        return -TMS_ECLOSED;
    if (m->held >= m->opt.queue_capacity)
        return -TMS_EFULL;
    *pmail = NULL;
    mail->duplicate = 0;
    if (sent_log_has(m, mail->event_id)) {
        tms_counter_add(m->duplicates, 1);
        mail->duplicate = 1;
        reply(mail, TMS_OK, "");
        return 0;
    }
    data = tms_mail_render(mail, m->from, m->domain, &len);
    if (!data) {
        reply(mail, TMS_INVALID_ARGUMENT, "unsafe mail header");
        return 0;
    }
    s = tms_new(send_t);
    s->m = m;
    s->mail = mail;
    s->data = data;
    s->len = len;
    m->held++;
    atomic_store_explicit(&m->held_gauge, m->held, memory_order_relaxed);
    enqueue(m, s);
    pump(m);
    return 0;
}

static void fail_waiting(smtp_t *m, const char *why)
{
    while (m->retry) {
        send_t *s = m->retry;
        m->retry = s->next;
        finish(m, s, TMS_UNAVAILABLE, why);
    }
    while (m->ready_head) {
        send_t *s = m->ready_head;
        m->ready_head = s->next;
        finish(m, s, TMS_UNAVAILABLE, why);
    }
    m->ready_tail = NULL;
    uv_timer_stop(&m->retry_timer);
}

/* Shutdown, first step: mails queued or backing off come back UNAVAILABLE at once
 * (their events stay pending), new submissions are refused with -TMS_ECLOSED, sends
 * in flight finish (within timeout_ms). */
static void stop(smtp_t *m)
{
    if (m->stopping)
        return;
    m->stopping = true;
    fail_waiting(m, "mailer stopping");
}

static void release_if_done(smtp_t *m)
{
    tms_port_closed_fn cb = m->closed_cb;
    void *ctx = m->closed_ctx;
    if (!m->closing || m->handles_open > 0)
        return;
    tms_metrics_drop_gauges_of(m); /* they read m */
    free(m->url);
    free(m->from);
    free(m->domain);
    free(m->dlq_dir);
    free(m->ca_file);
    free(m);
    if (cb)
        cb(ctx);
}

static void on_handle_closed(uv_handle_t *h)
{
    smtp_t *m;
    if (h->type == UV_POLL) {
        sock_t *sk = h->data;
        m = sk->m;
        free(sk);
    } else {
        m = h->data;
    }
    m->handles_open--;
    release_if_done(m);
}

/* Abort what is left (replies UNAVAILABLE), close the handles and free in their
 * close callbacks. */
static void destroy(smtp_t *m)
{
    int n = 0;
    stop(m);
    m->closing = true;
    /* Transfers still running (a forced shutdown): their events stay pending. */
    while (m->active_list) {
        send_t *s = m->active_list;
        curl_multi_remove_handle(m->multi, s->easy);
        unlink_active(m, s);
        finish(m, s, TMS_UNAVAILABLE, "mailer closed");
        n++;
    }
    if (n)
        tms_log_warn("mail_aborted", "in_flight=%d", n);
    curl_multi_cleanup(m->multi); /* closes cached connections: REMOVE callbacks */
    m->multi = NULL;
    while (m->socks)
        sock_close(m, m->socks);
    uv_close((uv_handle_t *)&m->curl_timer, on_handle_closed);
    uv_close((uv_handle_t *)&m->retry_timer, on_handle_closed);
}

static void on_close_due(uv_timer_t *t)
{
    smtp_t *m = t->data;
    if (!m->closing && m->held == 0)
        destroy(m);
}

/* A mail went back (or to the dead-letter pool): once the port is closing and
 * nothing is held, destroy on the next turn, outside curl's callbacks. */
static void held_less(smtp_t *m)
{
    m->held--;
    atomic_store_explicit(&m->held_gauge, m->held, memory_order_relaxed);
    if (m->close_asked && m->held == 0 && !m->closing)
        uv_timer_start(&m->retry_timer, on_close_due, 0, 0);
}

static size_t busy(tms_mailer_t *self)
{
    return ((smtp_t *)self)->held;
}

static void mailer_close(tms_mailer_t *self, tms_port_closed_fn cb, void *ctx)
{
    smtp_t *m = (smtp_t *)self;
    m->close_asked = true;
    m->closed_cb = cb;
    m->closed_ctx = ctx;
    stop(m); /* fail_waiting stopped the retry timer: it is free for the close */
    if (m->held == 0)
        uv_timer_start(&m->retry_timer, on_close_due, 0, 0);
}

/* ---- setup ----------------------------------------------------------------------- */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;

static void curl_init(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

tms_mailer_t *tms_smtp_new(uv_loop_t *loop, const tms_smtp_options_t *opt, tms_workpool_t *pool,
                           char *err, size_t err_len)
{
    smtp_t *m;
    tms_mail_t probe = {0};
    char *text;
    pthread_once(&curl_once, curl_init);
    if (curl_init_rc != CURLE_OK) {
        snprintf(err, err_len, "smtp: curl_global_init failed");
        return NULL;
    }
    /* Checked once here so a bad setting stops start-up instead of every mail. */
    snprintf(probe.to, sizeof(probe.to), "%s", opt->from);
    snprintf(probe.event_id, sizeof(probe.event_id), "00000000-0000-4000-8000-000000000000");
    text = tms_mail_render(&probe, opt->from, opt->domain, NULL);
    if (!text) {
        snprintf(err, err_len, "smtp: from address or domain not usable in a mail header");
        return NULL;
    }
    free(text);
    if (tms_mail_dlq_prepare(opt->dlq_dir) != 0) {
        snprintf(err, err_len, "smtp: dead-letter directory %s: %s", opt->dlq_dir, strerror(errno));
        return NULL;
    }

    m = tms_new(smtp_t);
    m->base.name = "smtp";
    m->base.submit = submit;
    m->base.busy = busy;
    m->base.close = mailer_close;
    m->loop = loop;
    m->pool = pool;
    m->url = tms_strdup(opt->url);
    m->from = tms_strdup(opt->from);
    m->domain = tms_strdup(opt->domain);
    m->dlq_dir = tms_strdup(opt->dlq_dir);
    m->ca_file = tms_strdup(opt->ca_file ? opt->ca_file : "");
    m->opt = *opt;
    m->opt.url = m->url;
    m->opt.from = m->from;
    m->opt.domain = m->domain;
    m->opt.dlq_dir = m->dlq_dir;
    m->opt.ca_file = m->ca_file;
    m->opt.starttls = tms_smtp_starttls_mode(opt->url, opt->starttls);
    if (strncmp(opt->url, "smtp://", 7) == 0 && url_has_credentials(opt->url)) {
        if (strcmp(m->opt.starttls, "require") == 0)
            tms_log_info("smtp_starttls", "mode=require reason=credentials setting=%s",
                         opt->starttls);
        else /* said explicitly: mail.starttls=off or try */
            tms_log_warn("smtp_starttls",
                         "mode=%s credentials=1 note=\"mail.url's credentials may be sent in "
                         "clear text\"",
                         m->opt.starttls);
    }
    if (m->opt.max_concurrent < 1)
        m->opt.max_concurrent = 1;
    if (m->opt.retry_attempts < 1)
        m->opt.retry_attempts = 1;
    m->rng = uv_hrtime() ^ ((uint64_t)getpid() << 32) ^ 0x9e3779b97f4a7c15ull;
    tms_breaker_init(&m->breaker, opt->breaker_window, opt->breaker_threshold_pct,
                     opt->breaker_cooldown_ms);
    atomic_store(&m->state_gauge, (int)m->breaker.state);

    m->multi = curl_multi_init();
    if (!m->multi)
        tms_oom(__FILE__, __LINE__);
    curl_multi_setopt(m->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
    curl_multi_setopt(m->multi, CURLMOPT_SOCKETDATA, m);
    curl_multi_setopt(m->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    curl_multi_setopt(m->multi, CURLMOPT_TIMERDATA, m);
    /* One connection per concurrent send, kept open between sends for reuse. */
    curl_multi_setopt(m->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)m->opt.max_concurrent);
    curl_multi_setopt(m->multi, CURLMOPT_MAXCONNECTS, (long)m->opt.max_concurrent);
    uv_timer_init(loop, &m->curl_timer);
    uv_timer_init(loop, &m->retry_timer);
    m->curl_timer.data = m->retry_timer.data = m;
    m->handles_open = 2;

#define SENDS(result)                                                                              \
    tms_metrics_counter("tms_mail_sends_total", "SMTP send attempts by result",                    \
                        "result=\"" result "\"")
    m->accepted = SENDS("accepted");
    m->transient = SENDS("transient");
    m->permanent = SENDS("permanent");
#undef SENDS
#define MOVES(to)                                                                                  \
    tms_metrics_counter("tms_mail_breaker_transitions_total",                                      \
                        "SMTP circuit breaker state changes", "to=\"" to "\"")
    m->to_open = MOVES("open");
    m->to_half_open = MOVES("half_open");
    m->to_closed = MOVES("closed");
#undef MOVES
    m->retries = tms_metrics_counter("tms_mail_retries_total",
                                     "SMTP attempts scheduled again after a transient failure", "");
    m->dead_letters =
        tms_metrics_counter("tms_mail_dead_letters_total",
                            "Mails rejected permanently and written as dead letters", "");
    m->dlq_failed =
        tms_metrics_counter("tms_mail_dead_letter_failures_total",
                            "Dead letters that could not be written (event left pending)", "");
    m->short_circuited =
        tms_metrics_counter("tms_mail_short_circuited_total",
                            "Mails handed back unsent because the breaker was open", "");
    m->duplicates = tms_metrics_counter("tms_mail_duplicates_total",
                                        "Mails not sent because their event was delivered", "");
    m->connects = tms_metrics_counter(
        "tms_mail_connections_total",
        "SMTP connections opened (fewer than sends while connections are reused)", "");
    m->duration = tms_metrics_histogram("tms_mail_send_duration_seconds",
                                        "One SMTP attempt, connect to final reply", "");
    tms_metrics_gauge_fn("tms_mail_breaker_state",
                         "SMTP circuit breaker: 0 closed, 1 open, 2 half-open", "", breaker_gauge,
                         m);
    tms_metrics_gauge_fn("tms_mail_held",
                         "Mails the SMTP mailer holds (queued, sending, backing off)", "",
                         held_gauge, m);
    return &m->base;
}

/* ---- blocking send (CLI) --------------------------------------------------------- */

typedef struct blob {
    const char *p;
    size_t len, off;
} blob_t;

static size_t on_read_blob(char *buf, size_t size, size_t nitems, void *arg)
{
    blob_t *b = arg;
    size_t n = size * nitems;
    if (n > b->len - b->off)
        n = b->len - b->off;
    memcpy(buf, b->p + b->off, n);
    b->off += n;
    return n;
}

int tms_smtp_send_blocking(const tms_smtp_options_t *opt, const char *to, const char *data,
                           size_t len, long *smtp_code, char *err, size_t err_len)
{
    char errbuf[CURL_ERROR_SIZE];
    blob_t b = {data, len, 0};
    struct curl_slist *rcpt;
    CURLcode res;
    CURL *e;
    pthread_once(&curl_once, curl_init);
    *smtp_code = 0;
    if (curl_init_rc != CURLE_OK || !(e = curl_easy_init())) {
        snprintf(err, err_len, "curl initialisation failed");
        return -1;
    }
    rcpt = setup_easy(e, opt, to, errbuf);
    curl_easy_setopt(e, CURLOPT_READFUNCTION, on_read_blob);
    curl_easy_setopt(e, CURLOPT_READDATA, &b);
    curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, (curl_off_t)len);
    res = curl_easy_perform(e);
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, smtp_code);
    if (res != CURLE_OK)
        snprintf(err, err_len, "%s", errbuf[0] ? errbuf : curl_easy_strerror(res));
    curl_slist_free_all(rcpt);
    curl_easy_cleanup(e);
    return res == CURLE_OK ? 0 : -1;
}
