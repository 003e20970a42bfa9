/* A protocol-neutral API call: what the REST and gRPC adapters turn a request into,
 * and what the gateway actor routes to the auth and task actors. One struct for
 * every operation keeps "one implementation per operation": the adapters only fill
 * arguments and render results.
 *
 * Ownership: the adapter allocates a call with tms_api_call_new, posts it to the
 * gateway with reply_to/cont set, and frees it with tms_api_call_free when the reply
 * arrives. Actors forward the same call and reply with it.
 *
 * Memory: one arena per call (core/arena.h), whose first chunk is inside the call, so
 * that a typical call is one malloc. Every string and array the call points to lives
 * in it: the arguments the adapter decodes, the results, and what the actors allocate
 * while they serve the call (their job state, the store operations they send, which
 * the stores fill in the same arena). tms_api_call_free wipes the secrets and
 * releases it all at once. Whoever holds the call may allocate from call->arena;
 * while a store operation that borrowed it is out, nobody else does. */
#ifndef TMS_CORE_API_H
#define TMS_CORE_API_H

#include <stdbool.h>
#include <stdint.h>

#include "core/arena.h"
#include "core/mailbox.h"
#include "core/ops.h"
#include "core/status.h"
#include "core/task.h"
#include "core/task_event.h"
#include "core/user_store.h"

/* Bytes of arena inside every call: room for a GET's or a create's strings, job and
 * store operation (more chains heap chunks); 4096 + 128 since the store operation
 * carries the push log read's fields (issue 23). */
#define TMS_API_CALL_ARENA (4096 + 128)

/* Where the call is in its route: the gateway sets it before each hop. */
typedef enum tms_api_stage {
    TMS_STAGE_AUTHENTICATE = 1, /* auth actor: verify the bearer token, fill principal */
    TMS_STAGE_EXECUTE,          /* owning actor: perform the operation */
} tms_api_stage_t;

/* Who is calling, once the bearer token was verified; or a TMS service acting on its
 * own behalf (service: the task and notifier actors, in this process or in another one
 * that presented the service credential), which no client can be; or (trusted) a
 * trusted peer's call without a token (grpc.trusted_peers), set by the gateway for an
 * operation whose legacy rule serves one (core/ops.h): no user, the op's legacy rule
 * applies. */
typedef struct tms_principal {
    bool authenticated;
    bool service;
    bool trusted;
    char user_id[TMS_USER_ID_LEN + 1];
    char role[8];
    char email[TMS_EMAIL_MAX + 1];
    int64_t expires_at_s; /* the end of the credential that authenticated it (token exp) */
} tms_principal_t;

/* Set by an adapter when nobody waits for a call's answer any more (a gRPC client
 * reset its stream). In the call's arena: it lives as long as the call, which its
 * adapter frees last; loop thread only, like every actor that reads it. */
typedef struct tms_api_cancel {
    bool cancelled;
} tms_api_cancel_t;

/* Rate-limit outcome for the adapters' headers (RateLimit-*, Retry-After). */
typedef struct tms_api_ratelimit {
    bool applied;
    uint32_t limit, remaining;
    uint64_t reset_s, retry_after_s;
    /* The gateway's own: a task creation slot was taken for this call; it is given back
     * unless the call creates a task (a failure or a replay uses none). */
    bool slot_taken;
} tms_api_ratelimit_t;

typedef struct tms_api_call {
    tms_msg_t msg; /* first member; msg.op is a tms_api_stage_t */
    tms_api_op_t op;
    uint64_t deadline_ms; /* uv_now-based absolute deadline; 0 = none */
    char request_id[65];
    char client_addr[64];
    /* Set by an adapter only: the call came without a token from a trusted peer
     * (grpc.trusted_peers); the gateway decides what that means from the table. */
    bool trusted_peer;
    tms_api_cancel_t *cancel; /* NULL: the adapter cannot cancel this call */
    tms_arena_t arena;        /* every string and array below, and the actors' per-call state */

    /* arguments (NULL when absent; strings in arena) */
    char *bearer;
    char *email;
    char *password;
    char target_id[32];
    /* task arguments: NULL = not given */
    int64_t task_id; /* parsed by the adapter; 0 = malformed id */
    char *title;
    char *description;
    char *status;
    char *assigned_to; /* "" = nobody (update: unassign) */
    bool has_if_match;
    int64_t if_match; /* expected version */
    char *idempotency_key;
    char *cursor;
    int32_t limit; /* 0 = default */
    /* task events (issue 23): watch and the push log read */
    char *ticket;   /* a stream ticket instead of the bearer token (core/ticket.h) */
    bool has_since; /* resume after the event `since` (watch); read after it */
    int64_t since;
    int64_t upto; /* read: events up to this one (0: no bound) */

    /* set by the gateway / auth actor */
    tms_principal_t principal;

    /* results */
    tms_error_t err;
    tms_api_ratelimit_t ratelimit;
    tms_user_t user; /* password_hash always cleared before reply */
    char *token;
    bool flag;
    tms_task_t task;
    tms_task_t *tasks; /* list: array of ntasks in arena */
    size_t ntasks;
    char *next_cursor; /* NULL at the end */
    bool replayed;     /* idempotent create answered with the first result */
    /* the ticket result: the ticket in token (wiped like a token), its end */
    int64_t ticket_expires_ms;
    /* the push log read: events in arena, the log's first and last seq */
    tms_task_event_t *events;
    size_t nevents;
    int64_t first_seq, last_seq;

    /* the adapter's reply route, kept while actors forward the call */
    tms_mailbox_t *origin_reply_to;
    tms_cont_fn origin_cont;
    void *origin_ctx;

    /* the arena's first chunk: last, and not zeroed by tms_api_call_new */
    _Alignas(max_align_t) unsigned char arena_first[TMS_API_CALL_ARENA];
} tms_api_call_t;

/** Allocate a call for op, zeroed but for its arena's first chunk; never NULL. */
tms_api_call_t *tms_api_call_new(tms_api_op_t op);

/** A copy of s in the call's arena; NULL when s is NULL. */
char *tms_api_call_strdup(tms_api_call_t *call, const char *s);

/** Free a call and its arena (every string it points to), wiping the secrets first
 * (bearer, password, token, the user's password hash). Sets *call NULL. The call's
 * memory is kept for reuse by this thread (at most 64; poisoned under ASan). */
void tms_api_call_free(tms_api_call_t **call);

/** Give call a cancel flag (in its arena, valid until the call is freed) and return
 * it for the adapter to set. */
tms_api_cancel_t *tms_api_cancel_attach(tms_api_call_t *call);

/** Nobody waits for the answer any more: the adapter cancelled the call or its
 * deadline (uv_now based, like deadline_ms) has passed at now_ms. Actors ask this
 * before they start store or hashing work, so an abandoned call costs no I/O;
 * work already sent runs to its end. */
bool tms_api_call_abandoned(const tms_api_call_t *call, uint64_t now_ms);

/** Why an abandoned call was abandoned: CANCELLED or DEADLINE_EXCEEDED, and a
 * message for its answer (which its adapter may already have given on its own). */
tms_status_t tms_api_abandoned_status(const tms_api_call_t *call, const char **message);

/** The op's name for logs and metrics ("register", ...): its row's (core/ops.h). */
const char *tms_api_op_name(tms_api_op_t op);

/** Set the call's error and reply to its current reply_to. */
void tms_api_fail(tms_api_call_t *call, tms_status_t code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
