/* Assignment emails beyond the notifier's plumbing: the limits on how many emails one
 * user can make TMS send (issue 17: one create and 20 reassignments mailed a victim 11
 * times, with a title the attacker chose), and the bodies, which show the task's title
 * as text a user wrote, not as TMS's words. Pure logic: the notifier owns one limiter
 * on its loop. */
#ifndef TMS_CORE_NOTIFY_H
#define TMS_CORE_NOTIFY_H

#include <stddef.h>
#include <stdint.h>

typedef struct tms_notify_limit tms_notify_limit_t;

typedef enum tms_notify_verdict {
    TMS_NOTIFY_SEND = 0,
    TMS_NOTIFY_OVER_ASSIGNER,  /* this assigner mailed this recipient too often */
    TMS_NOTIFY_OVER_RECIPIENT, /* everyone together mailed this recipient too often */
} tms_notify_verdict_t;

/** A limiter allowing per_assigner emails per hour from one assigner to one recipient and
 * per_recipient per hour to one recipient (token buckets: the whole budget at once, then
 * refilled evenly over the hour; 0 disables that limit). At most max_keys buckets of each
 * kind (least recently used evicted past that). In memory: a restart forgets it, and each
 * process that runs a notifier has its own. Never NULL. */
tms_notify_limit_t *tms_notify_limit_new(uint32_t per_assigner, uint32_t per_recipient,
                                         size_t max_keys);

/** Free *l and set it NULL; NULL is fine. */
void tms_notify_limit_free(tms_notify_limit_t **l);

/** Decide whether event_id (from assigner, "" when the event names none, to recipient)
 * may be mailed at now_ms (monotonic). The assigner's budget is asked first, so an
 * assigner over its own limit does not use up what others may send the recipient. An
 * event that was let through before (redelivered after a failed send) is let through
 * again without taking from any budget; the last 1024 such events are remembered
 * (O(1024) compares per call: fine at mail rates). */
tms_notify_verdict_t tms_notify_limit_check(tms_notify_limit_t *l, const char *event_id,
                                            const char *assigner, const char *recipient,
                                            uint64_t now_ms);

/** The verdict's name for logs: "sent", "per_assigner", "per_recipient". */
const char *tms_notify_verdict_name(tms_notify_verdict_t v);

/** The plain-text body of an assignment email: the task id, who assigned it (assigner
 * "" leaves that out), and the title quoted line by line ("> ") under a line that says
 * a user wrote it; title NULL (an original system's event, which has none) leaves the
 * title out, as the original's mail did. Heap; never NULL. */
char *tms_notify_text(int64_t task_id, const char *title, const char *assigner);

/** The HTML body: the same, with the title HTML-escaped in a labelled <blockquote>.
 * Heap; never NULL. */
char *tms_notify_html(int64_t task_id, const char *title, const char *assigner);

#endif
