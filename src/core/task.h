/* A task as every layer sees it (API.md "task"). Its strings live in an arena
 * (core/arena.h): the call's, or the store operation's that read it; nothing frees
 * them one by one. */
#ifndef TMS_CORE_TASK_H
#define TMS_CORE_TASK_H

#include <stdint.h>

#include "core/arena.h"
#include "core/user_store.h"

#define TMS_TITLE_MAX_CHARS 200
#define TMS_DESCRIPTION_MAX_CHARS 10000

typedef struct tms_task {
    int64_t id;
    char *title;                           /* in an arena; NULL only in an empty struct */
    char *description;                     /* in an arena */
    char status[16];                       /* "open" | "in progress" | "closed" */
    char assigned_to[TMS_USER_ID_LEN + 1]; /* "" = nobody */
    char created_by[TMS_USER_ID_LEN + 1];
    int64_t created_at_ms, updated_at_ms;
    int64_t version; /* 1 at creation, +1 per change */
} tms_task_t;

/** Copy src into dst, its strings into arena. */
void tms_task_copy(tms_arena_t *arena, tms_task_t *dst, const tms_task_t *src);

/** True when s is one of the three statuses. */
int tms_task_status_valid(const char *s);

/** The opaque list cursor naming the task after which the next page starts
 * (base64url of "t1:<id>"), in arena. */
char *tms_task_cursor_encode(tms_arena_t *arena, int64_t last_id);

/** The last id of a cursor made by tms_task_cursor_encode, or 0 when cursor is
 * malformed (any string is safe). */
int64_t tms_task_cursor_decode(const char *cursor);

#endif
