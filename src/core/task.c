#include "core/task.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <sodium.h>

#include "core/text.h"

void tms_task_copy(tms_arena_t *arena, tms_task_t *dst, const tms_task_t *src)
{
    *dst = *src;
    dst->title = src->title ? tms_arena_strdup(arena, src->title) : NULL;
    dst->description = src->description ? tms_arena_strdup(arena, src->description) : NULL;
}

int tms_task_status_valid(const char *s)
{
    return strcmp(s, "open") == 0 || strcmp(s, "in progress") == 0 || strcmp(s, "closed") == 0;
}

#define CURSOR_PREFIX "t1:"

/* Cursors are opaque to clients: base64url of "t1:<last id>". */
char *tms_task_cursor_encode(tms_arena_t *arena, int64_t last_id)
{
    char raw[40], *out;
    size_t n = (size_t)snprintf(raw, sizeof(raw), CURSOR_PREFIX "%" PRId64, last_id);
    size_t cap = sodium_base64_encoded_len(n, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    out = tms_arena_alloc(arena, cap);
    sodium_bin2base64(out, cap, (const unsigned char *)raw, n,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    return out;
}

int64_t tms_task_cursor_decode(const char *cursor)
{
    unsigned char raw[40];
    size_t n = 0;
    if (strlen(cursor) > 40 ||
        sodium_base642bin(raw, sizeof(raw) - 1, cursor, strlen(cursor), NULL, &n, NULL,
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0 ||
        n <= strlen(CURSOR_PREFIX) || memcmp(raw, CURSOR_PREFIX, strlen(CURSOR_PREFIX)) != 0)
        return 0;
    return tms_parse_id((const char *)raw + 3, n - 3);
}
