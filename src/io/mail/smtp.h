/* The SMTP mailer: libcurl's multi socket API driven by the loop (sockets on uv_poll,
 * curl's timer on a uv_timer), a cap on concurrent sends with connection reuse,
 * retries with full-jitter back-off for transient failures, a circuit breaker, and a
 * dead-letter file for mails the server rejects permanently. */
#ifndef TMS_IO_SMTP_H
#define TMS_IO_SMTP_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/mailer.h"
#include "core/workpool.h"

typedef struct tms_smtp_options {
    const char *url;       /* smtp://[user:pass@]host:port or smtps://... */
    const char *from;      /* envelope and header From */
    const char *domain;    /* Message-ID right-hand side */
    const char *starttls;  /* "auto" | "off" | "try" | "require" (smtp:// only) */
    const char *dlq_dir;   /* dead letters, one <event_id>.eml each */
    const char *ca_file;   /* PEM CAs to verify the server; NULL or "": system store */
    int64_t timeout_ms;    /* one attempt, connect to final reply */
    int max_concurrent;    /* transfers at once */
    size_t queue_capacity; /* mails held (queued, in flight, backing off) */
    int retry_attempts;    /* attempts per submission */
    int64_t retry_base_ms, retry_max_ms;
    int breaker_window, breaker_threshold_pct;
    int64_t breaker_cooldown_ms;
} tms_smtp_options_t;

/** Create the mailer on loop; the mailer port, closed through its vtable
 * (core/port.h): new mails refused with -TMS_ECLOSED, mails queued or backing off
 * come back UNAVAILABLE at once (their events stay pending), sends in flight finish
 * (within timeout_ms), then the handles close, the mailer is freed and cb runs. A
 * mail a server rejected for good goes to the dead-letter pool and replies from
 * there. Dead letters are written on pool (borrowed; it must outlive every submitted
 * mail). Returns NULL with one line in err when the options are unusable (bad
 * from/domain, dead-letter directory not writable, curl failed). */
tms_mailer_t *tms_smtp_new(uv_loop_t *loop, const tms_smtp_options_t *opt, tms_workpool_t *pool,
                           char *err, size_t err_len);

/** What STARTTLS setting a send uses: "auto" becomes "require" when url carries
 * credentials (a user name or password: a server that offers no STARTTLS, or a
 * man in the middle who strips it, must not get them in clear text) and "try"
 * otherwise; "off", "try" and "require" stay as they are (anything else is "try").
 * Returns a static string. */
const char *tms_smtp_starttls_mode(const char *url, const char *starttls);

/** Send one complete RFC 5322 message synchronously (the CLI's dead-letter replay;
 * never on a loop). Returns 0, or -1 with the reason in err; *smtp_code is the
 * server's last reply code (0 when none). */
int tms_smtp_send_blocking(const tms_smtp_options_t *opt, const char *to, const char *data,
                           size_t len, long *smtp_code, char *err, size_t err_len);

#endif
