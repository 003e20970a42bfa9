/* libFuzzer: the list cursor decoder (any client string), and encode/decode round
 * trips for the ids that it accepts. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/task.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1), *again;
    int64_t id;
    memcpy(s, data, size);
    s[size] = '\0';
    id = tms_task_cursor_decode(s);
    if (id < 0)
        abort();
    if (id > 0) {
        tms_arena_t arena;
        tms_arena_init(&arena, NULL, 0);
        again = tms_task_cursor_encode(&arena, id);
        if (tms_task_cursor_decode(again) != id)
            abort();
        tms_arena_fini(&arena);
    }
    free(s);
    return 0;
}
