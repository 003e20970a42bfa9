#include "core/api.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "core/alloc.h"

static void free_msg(tms_msg_t *msg)
{
    tms_api_call_t *call = (tms_api_call_t *)msg;
    tms_api_call_free(&call);
}

/* Freed calls kept per thread for the next one: a call with its first arena chunk is
 * too large for malloc's per-thread cache, and its malloc/free pair was 2 % of a GET
 * (issue 19). A call may be freed on another thread than the one that made it; each
 * thread's list is bounded, and emptied when the thread exits. */
#define MAX_SPARE_CALLS 64

typedef struct spare_calls {
    tms_api_call_t *slot[MAX_SPARE_CALLS]; /* an array, not a list through the poisoned
                                              calls: LeakSanitizer sees them from here */
    int n;
    bool key_set;
} spare_calls_t;

static __thread spare_calls_t spare;
static pthread_key_t spare_key;
static pthread_once_t spare_once = PTHREAD_ONCE_INIT;

static void spare_drop(void *arg)
{
    spare_calls_t *sp = arg;
    while (sp->n > 0) {
        tms_api_call_t *call = sp->slot[--sp->n];
        TMS_UNPOISON(call, sizeof(*call));
        free(call);
    }
}

static void spare_key_make(void)
{
    (void)pthread_key_create(&spare_key, spare_drop);
}

static tms_api_call_t *call_alloc(void)
{
    tms_api_call_t *call;
    if (spare.n == 0)
        return tms_malloc(sizeof(*call));
    call = spare.slot[--spare.n];
    TMS_UNPOISON(call, sizeof(*call));
    return call;
}

static void call_release(tms_api_call_t *call)
{
    if (spare.n >= MAX_SPARE_CALLS) {
        free(call);
        return;
    }
    if (!spare.key_set) { /* so that the calls are freed with the thread */
        pthread_once(&spare_once, spare_key_make);
        (void)pthread_setspecific(spare_key, &spare);
        spare.key_set = true;
    }
    TMS_POISON(call, sizeof(*call));
    spare.slot[spare.n++] = call;
}

tms_api_call_t *tms_api_call_new(tms_api_op_t op)
{
    tms_api_call_t *call = call_alloc();
    /* The arena's chunk is not zeroed: every allocation from it is written first. */
    memset(call, 0, offsetof(tms_api_call_t, arena_first));
    tms_arena_init(&call->arena, call->arena_first, sizeof(call->arena_first));
    call->op = op;
    call->msg.free_fn = free_msg;
    return call;
}

char *tms_api_call_strdup(tms_api_call_t *call, const char *s)
{
    return s ? tms_arena_strdup(&call->arena, s) : NULL;
}

static void wipe(char *s)
{
    if (s)
        sodium_memzero(s, strlen(s));
}

void tms_api_call_free(tms_api_call_t **pcall)
{
    tms_api_call_t *call = *pcall;
    if (!call)
        return;
    *pcall = NULL;
    wipe(call->bearer);
    wipe(call->password);
    wipe(call->token);
    wipe(call->ticket);
    sodium_memzero(call->user.password_hash, sizeof(call->user.password_hash));
    tms_arena_fini(&call->arena);
    call_release(call);
}

tms_api_cancel_t *tms_api_cancel_attach(tms_api_call_t *call)
{
    if (!call->cancel)
        call->cancel = tms_arena_calloc(&call->arena, 1, sizeof(*call->cancel));
    return call->cancel;
}

bool tms_api_call_abandoned(const tms_api_call_t *call, uint64_t now_ms)
{
    return (call->cancel && call->cancel->cancelled) ||
           (call->deadline_ms && now_ms >= call->deadline_ms);
}

tms_status_t tms_api_abandoned_status(const tms_api_call_t *call, const char **message)
{
    bool cancelled = call->cancel && call->cancel->cancelled;
    *message = cancelled ? "cancelled by the client" : "deadline exceeded";
    return cancelled ? TMS_CANCELLED : TMS_DEADLINE_EXCEEDED;
}

const char *tms_api_op_name(tms_api_op_t op)
{
    return tms_op_name(op);
}

void tms_api_fail(tms_api_call_t *call, tms_status_t code, const char *fmt, ...)
{
    va_list ap;
    call->err.code = code;
    va_start(ap, fmt);
    vsnprintf(call->err.message, sizeof(call->err.message), fmt, ap);
    va_end(ap);
    tms_mailbox_reply(&call->msg);
}
