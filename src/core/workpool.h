/* A bounded pool of worker threads for CPU work that must not run on a loop
 * (password hashing). A job is a message: the pool runs job->run(job) on one of
 * its threads, then replies with it to job->msg.reply_to, so the continuation runs
 * on the submitter's loop. Sized on its own rather than with libuv's threadpool,
 * whose 4 threads are shared with DNS and file work. */
#ifndef TMS_CORE_WORKPOOL_H
#define TMS_CORE_WORKPOOL_H

#include <stddef.h>

#include "core/mailbox.h"

typedef struct tms_workpool tms_workpool_t;

typedef struct tms_job tms_job_t;
typedef struct tms_job_key tms_job_key_t;
struct tms_job {
    tms_msg_t msg; /* first member; reply_to and cont set by the submitter */
    void (*run)(tms_job_t *job);
    tms_job_key_t *key; /* the pool's: set by tms_workpool_submit_keyed */
};

/** Start `threads` workers sharing a queue of at most `capacity` jobs. Never NULL. */
tms_workpool_t *tms_workpool_new(const char *name, int threads, size_t capacity);

/** The same with the workers at nice value `nice` (0..19, clamped): the kernel then
 * gives the loops the CPU first, and the pool the rest (work that may lag behind a
 * burst: mail files, password hashes). */
tms_workpool_t *tms_workpool_new_nice(const char *name, int threads, size_t capacity, int nice);

/** The same with the workers at SCHED_IDLE (Linux; at nice `nice` where that is not
 * available): they run only when no other thread of their CPU wants it, and a loop that
 * wakes takes the CPU from them at once. At nice 10 alone, the kernel lets a running
 * worker finish its slice first: a waking loop waited up to 3.8 ms behind a password
 * hash (issue 20). And the kernel still runs such a worker now and then while the loop
 * is runnable, until its next tick (4 ms at HZ 250): a thread of the pool at the normal
 * policy (`tms-<name>-kick`) wakes every 0.5 ms while a job runs, which takes the CPU
 * from the worker and hands it back to the loop. Their jobs should hold locks only
 * briefly: a worker preempted while holding one waits for the CPU to be idle (or for
 * its small share of it). */
tms_workpool_t *tms_workpool_new_idle(const char *name, int threads, size_t capacity, int nice);

/** As tms_workpool_new_nice, with the kicker of tms_workpool_new_idle: workers at the
 * normal policy and this nice value always advance on a busy CPU (about a tenth of it
 * at nice 10), and the kicker's wake-ups bound how long a waking loop waits behind one
 * (1.3-2.1 ms measured, against 3.9 ms without; issue 20). */
tms_workpool_t *tms_workpool_new_kicked(const char *name, int threads, size_t capacity, int nice);

/** How often an idle pool's kicker woke so far (0 for the other pools). */
uint64_t tms_workpool_kicks(tms_workpool_t *pool);

/** Queue a job; takes ownership and clears *job on success. Returns 0, -TMS_EFULL
 * (queue full: answer UNAVAILABLE) or -TMS_ECLOSED. */
int tms_workpool_submit(tms_workpool_t *pool, tms_job_t **job);

/** Like tms_workpool_submit, but at most max_per_key jobs of one key (a client
 * address) may be queued or running at once (0: no limit), so that a few keys cannot
 * fill the queue and the threads for everyone; the key is copied. Returns 0,
 * -TMS_ERANGE (key has max_per_key jobs in the pool: answer RESOURCE_EXHAUSTED),
 * -TMS_EFULL or -TMS_ECLOSED. O(1); one mutex shared by every submitter. */
int tms_workpool_submit_keyed(tms_workpool_t *pool, tms_job_t **job, const char *key,
                              size_t max_per_key);

/** Jobs of key queued or running (tests, metrics). */
size_t tms_workpool_key_jobs(tms_workpool_t *pool, const char *key);

/** Jobs waiting to run. */
size_t tms_workpool_depth(tms_workpool_t *pool);

/** Stop taking jobs, run those queued, join the threads and free. Sets *pool NULL. */
void tms_workpool_free(tms_workpool_t **pool);

#endif
