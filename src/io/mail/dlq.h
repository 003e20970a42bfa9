/* Dead letters of the SMTP mailer: one file `<dir>/<event_id>.eml` per mail the
 * server refused permanently, holding the rendered message after two header lines of
 * our own (X-TMS-Dead-Letter-Reason, X-TMS-Dead-Letter-At). A file, not a table: the
 * stores are ports with three backends each, and an operator can read, grep and
 * replay a file with no database at hand. `tms mail dlq list|replay` works on them. */
#ifndef TMS_IO_MAIL_DLQ_H
#define TMS_IO_MAIL_DLQ_H

#include <stddef.h>
#include <stdio.h>

/** Create dir (mode 0700, parents too) when missing and check it is writable.
 * Returns 0 or -1 with errno. */
int tms_mail_dlq_prepare(const char *dir);

/** Write a dead letter durably (tmp file, fsync, rename, fsync dir); blocking, for a
 * worker thread. reason is reduced to printable ASCII. Rewriting the same event
 * replaces the file, so a redelivered event leaves one letter. Returns 0 or -1 with
 * errno. */
int tms_mail_dlq_write(const char *dir, const char *event_id, const char *reason,
                       const char *message, size_t len);

/** Print one line per dead letter: event id, time, recipient, reason. Returns the
 * number listed, or -1 when dir cannot be read. */
int tms_mail_dlq_list(const char *dir, FILE *out);

/** How replay sends one letter: data (len bytes) is the message as it was to be sent,
 * to its recipient. Returns 0, or -1 with the reason in err and the server's last reply
 * code in *code (0 when none). The caller supplies the mailer (the CLI: SMTP), so this
 * file does not depend on smtp.c, which writes the letters. */
typedef int (*tms_mail_dlq_send_fn)(void *ctx, const char *to, const char *data, size_t len,
                                    long *code, char *err, size_t err_len);

/** Send the letter of event_id (or every letter when event_id is NULL) with send(ctx);
 * a sent letter moves to dir/replayed/. Reports each on out. Returns the number that
 * failed (0: all sent), or -1 when dir cannot be read. */
int tms_mail_dlq_replay(const char *dir, const char *event_id, tms_mail_dlq_send_fn send, void *ctx,
                        FILE *out);

#endif
