/* The Maildir mailer: each mail becomes one file `<dir>/new/<event_id>.tms`, written on
 * a worker pool thread (tmp/, fsync, link into new/, fsync new/). The file name comes
 * from the event id alone, so a second submission of the same event finds the first
 * and reports duplicate instead of writing again. */
#ifndef TMS_IO_MAILDIR_H
#define TMS_IO_MAILDIR_H

#include <stddef.h>
#include <uv.h>

#include "core/mailer.h"
#include "core/workpool.h"

/** Create the Maildir mailer: makes dir and dir/{tmp,new,cur} (mode 0700) when
 * missing. from is the From address and domain the Message-ID right-hand side (both
 * copied). File writes run on pool (one job at a time), which the caller owns and must
 * keep until every submitted mail came back; at most queue_capacity mails (0: 1) wait
 * to be written, a submit beyond that fails with -TMS_EFULL. Call on loop's thread; the
 * mailer port is closed through its vtable (core/port.h): new mails refused, mails
 * queued or being written are written and come back, then the mailer is freed and cb
 * runs on loop. Returns NULL with a message in err when a directory cannot be created
 * or written, or from/domain are not usable in a header. */
tms_mailer_t *tms_maildir_new(uv_loop_t *loop, const char *dir, const char *from,
                              const char *domain, tms_workpool_t *pool, size_t queue_capacity,
                              char *err, size_t err_len);

#endif
