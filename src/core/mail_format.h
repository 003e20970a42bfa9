/* The text of a mail: one RFC 5322 / MIME message per tms_mail_t, built so that no
 * header can be injected. Used by the mail adapters (Maildir, SMTP). */
#ifndef TMS_CORE_MAIL_FORMAT_H
#define TMS_CORE_MAIL_FORMAT_H

#include <stddef.h>

#include "core/mailer.h"

/** Render mail as an RFC 5322 message with CRLF line ends: Date, From, To, Subject
 * (RFC 2047 encoded when not ASCII), Message-ID <event_id@domain>, MIME-Version and
 * a multipart/alternative text + HTML body (quoted-printable). Returns heap text, or
 * NULL when a header value would carry CR, LF or another control character (header
 * injection) or an address is not a plain addr-spec. */
char *tms_mail_render(const tms_mail_t *mail, const char *from, const char *domain, size_t *len);

#endif
