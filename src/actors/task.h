/* The task actor: the rules of API.md's /api/task routes and TaskService —
 * validation, who may change what, versions and If-Match, idempotent creation —
 * and the task side of the delete-user saga (consumer of user_deleted). It reaches
 * tasks through the task store port, asks the auth actor whether an assignee exists,
 * and kicks the outbox relay after each write that recorded an event. It also reads
 * the push log for the push hubs (TMS_API_TASK_EVENTS) and purges it. */
#ifndef TMS_ACTORS_TASK_H
#define TMS_ACTORS_TASK_H

#include <stddef.h>
#include <uv.h>

#include "core/event_bus.h"
#include "core/mailbox.h"
#include "core/outbox.h"
#include "core/push.h"
#include "core/relay.h"
#include "core/task_store.h"

/* The actor (tms_task_t is a task, core/task.h). */
typedef struct tms_task_actor tms_task_actor_t;

typedef struct tms_task_config {
    size_t mailbox_capacity;
    tms_task_store_t *tasks; /* borrowed */
    tms_outbox_t *outbox;    /* the task store's outbox and inbox; borrowed */
    tms_mailbox_t *auth;     /* for "does this assignee exist" */
    tms_event_bus_t *bus;    /* user_deleted arrives through it */
    tms_relay_t *relay;      /* kicked after writes with events */
    /* Poked after every write (its task events are committed: core/push.h); NULL:
     * nobody to tell. */
    tms_push_shared_t *push;
    /* The push log's retention: events older than retention_ms, or beyond the newest
     * max_events, are purged every purge_ms (0: this actor does not purge; one actor
     * per process does). */
    uint64_t push_retention_ms, push_purge_ms;
    int64_t push_max_events;
} tms_task_config_t;

/** Start the actor on loop and subscribe it to user_deleted (group task-group).
 * Never NULL. */
tms_task_actor_t *tms_task_start(uv_loop_t *loop, const tms_task_config_t *cfg);

/** Where the gateway posts task calls (msg.op = TMS_STAGE_EXECUTE). */
tms_mailbox_t *tms_task_mailbox(tms_task_actor_t *actor);

/* The actor stops on a stop message (tms_stop_send, core/mailbox.h): calls and
 * deliveries it holds finish first; tms_task_free once it replied. */

/** Calls and deliveries being worked on. */
size_t tms_task_inflight(tms_task_actor_t *actor);

/** Free once stopped, or once nothing is in flight. Sets *actor NULL. */
void tms_task_free(tms_task_actor_t **actor);

#endif
