/* The mailer port: Maildir or SMTP. A mail is a message that comes back to
 * mail->msg.reply_to with err set; OK means the message is stored (Maildir) or the
 * server accepted it (SMTP). Sending the same event_id twice must not produce a
 * second delivery where the adapter can prevent it. */
#ifndef TMS_CORE_MAILER_H
#define TMS_CORE_MAILER_H

#include <stdint.h>

#include "core/mailbox.h"
#include "core/port.h"
#include "core/status.h"
#include "core/user_store.h"

typedef struct tms_mail {
    tms_msg_t msg; /* first member */
    char to[TMS_EMAIL_MAX + 1];
    char subject[256];       /* UTF-8; encoded by the renderer when not ASCII */
    char event_id[37];       /* the Message-ID is derived from it */
    char *text;              /* plain text body, UTF-8, heap */
    char *html;              /* HTML body, UTF-8, heap; may be NULL */
    int64_t date_ms;         /* Date: header */
    tms_error_t err;         /* out: OK, INVALID_ARGUMENT (unsafe address), UNAVAILABLE (try
                              * again later), FAILED_PRECONDITION (refused for good and kept
                              * as a dead letter: do not retry) */
    int duplicate;           /* out: the adapter found it already delivered */
    uint64_t retry_after_ms; /* out, UNAVAILABLE: no use trying before this (a circuit
                              * breaker's remaining cool-down); 0: unknown */
} tms_mail_t;

/** Allocate a zeroed mail; never NULL. */
tms_mail_t *tms_mail_new(void);

/** Free a mail and its bodies. Sets *m NULL. */
void tms_mail_free(tms_mail_t **m);

typedef struct tms_mailer tms_mailer_t;
struct tms_mailer {
    const char *name; /* "maildir", "smtp": for logs only, never to dispatch on */
    /** Queue mail; on success takes ownership and later replies. Returns 0,
     * -TMS_EFULL or -TMS_ECLOSED. */
    int (*submit)(tms_mailer_t *self, tms_mail_t **mail);
    /** Mails accepted and not yet answered (core/port.h). Loop thread. */
    size_t (*busy)(tms_mailer_t *self);
    /** Refuse new mails; mails waiting (queued, backing off) come back UNAVAILABLE
     * at once (their events stay pending), sends in flight finish; free; then
     * cb(ctx) on the mailer's loop (core/port.h). */
    void (*close)(tms_mailer_t *self, tms_port_closed_fn cb, void *ctx);
};

static inline int tms_mailer_submit(tms_mailer_t *m, tms_mail_t **mail)
{
    return m->submit(m, mail);
}

#endif
