/* A task event of the push log (issue 23): one row per change of a task, written by
 * the task store in the transaction of the change (triggers of the migration that
 * added it), kept push.retention, read back in seq order by the push hubs
 * (core/push.h). seq is the event id clients see: it grows with commit order (SQLite:
 * one writer; PostgreSQL: a sequence, whose rare holes the hub waits out, push.h). */
#ifndef TMS_CORE_TASK_EVENT_H
#define TMS_CORE_TASK_EVENT_H

#include <stdint.h>

#include "core/task.h"

typedef enum tms_task_event_type {
    TMS_TASK_EVENT_CREATED = 1,
    TMS_TASK_EVENT_UPDATED,  /* any change but of the assignee */
    TMS_TASK_EVENT_ASSIGNED, /* the assignee changed (to nobody too) */
    TMS_TASK_EVENT_DELETED,  /* task: as it was */
    TMS_TASK_EVENT_RESET,    /* not stored: a resume from outside the window */
} tms_task_event_type_t;

typedef struct tms_task_event {
    int64_t seq;
    tms_task_event_type_t type;
    int64_t at_ms;
    tms_task_t task;                            /* after the change; strings in an arena */
    char prev_assigned_to[TMS_USER_ID_LEN + 1]; /* before the change ("" nobody, created) */
    char prev_status[16];                       /* before the change ("" created) */
} tms_task_event_t;

/** "created", "updated", "assigned", "deleted", "reset"; "unknown" otherwise. */
const char *tms_task_event_type_name(tms_task_event_type_t type);

/** The type named s (as the store writes it), or 0. */
tms_task_event_type_t tms_task_event_type_parse(const char *s);

#endif
