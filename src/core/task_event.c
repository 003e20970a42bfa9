/* Task event types (task_event.h). */
#include "core/task_event.h"

#include <string.h>

static const char *const names[] = {
    [TMS_TASK_EVENT_CREATED] = "created",   [TMS_TASK_EVENT_UPDATED] = "updated",
    [TMS_TASK_EVENT_ASSIGNED] = "assigned", [TMS_TASK_EVENT_DELETED] = "deleted",
    [TMS_TASK_EVENT_RESET] = "reset",
};
#define NNAMES (sizeof(names) / sizeof(names[0]))

const char *tms_task_event_type_name(tms_task_event_type_t type)
{
    return (size_t)type < NNAMES && names[type] ? names[type] : "unknown";
}

tms_task_event_type_t tms_task_event_type_parse(const char *s)
{
    for (size_t i = 1; s && i < NNAMES; i++) {
        if (names[i] && i != TMS_TASK_EVENT_RESET && strcmp(names[i], s) == 0)
            return (tms_task_event_type_t)i;
    }
    return 0;
}
