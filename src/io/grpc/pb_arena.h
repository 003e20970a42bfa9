/* protobuf-c messages unpacked into a call's arena (core/arena.h): the message, its
 * strings and arrays take no malloc of their own and go with the call, so nothing
 * is freed after use (protobuf_c_message_free_unpacked is not called on them). */
#ifndef TMS_IO_GRPC_PB_ARENA_H
#define TMS_IO_GRPC_PB_ARENA_H

#include <protobuf-c/protobuf-c.h>

#include "core/arena.h"

static inline void *tms_pb_arena_alloc(void *data, size_t size)
{
    return tms_arena_alloc(data, size);
}

static inline void tms_pb_arena_free(void *data, void *p)
{
    (void)data;
    (void)p; /* released with the arena */
}

/** An allocator for protobuf-c's unpack that carves from arena. */
static inline ProtobufCAllocator tms_pb_arena(tms_arena_t *arena)
{
    return (ProtobufCAllocator){tms_pb_arena_alloc, tms_pb_arena_free, arena};
}

/** A string field of a message unpacked into arena, writable (the callers trim in
 * place): an absent field points at protobuf-c's read-only "", so it gets its own. */
static inline char *tms_pb_arena_string(tms_arena_t *arena, char *s)
{
    return !s || s == protobuf_c_empty_string ? tms_arena_strdup(arena, "") : s;
}

#endif
