#include "core/task.h"

#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"

void tms_task_dispose(tms_task_t *t)
{
    free(t->title);
    free(t->description);
    memset(t, 0, sizeof(*t));
}

void tms_task_copy(tms_task_t *dst, const tms_task_t *src)
{
    *dst = *src;
    dst->title = src->title ? tms_strdup(src->title) : NULL;
    dst->description = src->description ? tms_strdup(src->description) : NULL;
}

int tms_task_status_valid(const char *s)
{
    return strcmp(s, "open") == 0 || strcmp(s, "in progress") == 0 || strcmp(s, "closed") == 0;
}
