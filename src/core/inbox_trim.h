/* Inbox retention: deletes a store's records of handled events (the inbox, which
 * consumers keep to drop redeliveries; core/outbox.h) older than a retention, soon
 * after start and then at an interval, in bounded steps (TMS_INBOX_TRIM). One per
 * store whose inbox a process's consumers use, on worker 0's loop. Several processes
 * sharing a database each trim it: a second delete of the same records finds them gone. */
#ifndef TMS_CORE_INBOX_TRIM_H
#define TMS_CORE_INBOX_TRIM_H

#include <stdint.h>
#include <uv.h>

#include "core/outbox.h"

typedef struct tms_inbox_trim tms_inbox_trim_t;

/** Trim outbox's inbox to retention_ms: a round first_ms from now and then every
 * every_ms; a round goes on in steps while the store says a next step may find more
 * (TMS_INBOX_TRIM's more). name labels its log lines and metric ("tasks", "users";
 * static). retention_ms 0: NULL (the inbox is kept whole). */
tms_inbox_trim_t *tms_inbox_trim_new(uv_loop_t *loop, tms_outbox_t *outbox, uint64_t retention_ms,
                                     uint64_t first_ms, uint64_t every_ms, const char *name);

/** Start no more steps; on_stopped(arg) once the step out (if any) is answered (on the
 * loop, maybe before this returns). trim NULL: on_stopped at once. */
void tms_inbox_trim_stop(tms_inbox_trim_t *trim, void (*on_stopped)(void *arg), void *arg);

/** Free a stopped trim (handles close asynchronously). Sets *trim NULL. */
void tms_inbox_trim_free(tms_inbox_trim_t **trim);

#endif
