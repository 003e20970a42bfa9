/* The auth actor: accounts, passwords and tokens. It owns the rules of API.md's
 * /api/auth routes and AuthService: validation, hashing (on the hash pool, never on
 * the loop), token issue and verification (version checks against the store), and
 * who may log out or delete whom. It reaches users only through the user store
 * port. */
#ifndef TMS_ACTORS_AUTH_H
#define TMS_ACTORS_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/api.h"
#include "core/event_bus.h"
#include "core/mailbox.h"
#include "core/outbox.h"
#include "core/push.h"
#include "core/relay.h"
#include "core/ticket.h"
#include "core/user_cache.h"
#include "core/user_store.h"
#include "core/workpool.h"

typedef struct tms_auth tms_auth_t;

typedef struct tms_auth_config {
    const unsigned char *jwt_key; /* copied */
    size_t jwt_key_len;           /* >= 32 */
    const char *issuer;
    int64_t token_ttl; /* seconds */
    unsigned long long argon2_opslimit;
    size_t argon2_memlimit; /* bytes */
    size_t mailbox_capacity;
    uint64_t user_cache_ms; /* how long a verified user is trusted without the store */
    tms_event_bus_t *bus;   /* compensate_user_deletion arrives through it; may be NULL */
    tms_outbox_t *inbox;    /* handled-event log of the user store; may be NULL */
    tms_relay_t *relay;     /* kicked after a delete wrote its user_deleted event */
    /* The user cache shared by the auth actors of every worker (borrowed, outlives the
     * actor); NULL: the actor makes its own of user_cache_ms. */
    tms_user_cache_t *user_cache;
    /* A hash of a dummy password made with these argon2 settings (copied), verified
     * for unknown emails; NULL: the actor hashes one at start (tens of ms and
     * argon2_memlimit bytes, which N workers starting at once would multiply). */
    const char *dummy_hash;
    /* Password hashes (register, login) one client address may have queued or running
     * in the shared hash pool at once; beyond it RESOURCE_EXHAUSTED. 0: no limit. */
    size_t hash_per_address;
    /* A hash that waited longer than this in the hash pool's queue is not computed: the
     * register or login answers UNAVAILABLE (503). 0: no limit. */
    uint64_t hash_queue_ms;
    unsigned ipv6_prefix; /* IPv6 clients count per prefix of this many bits; 0: 64 */
    /* The used stream tickets, shared by the auth actors of every worker (borrowed,
     * outlives the actor); NULL: the actor keeps its own. */
    tms_ticket_book_t *tickets;
    /* Told of a logout or delete, so that the user's task event streams end at once
     * (core/push.h); NULL: nobody to tell. */
    tms_push_shared_t *push;
    /* auth.registration: who creates accounts (register is refused unless OPEN; the
     * admin route unless OPEN or ADMIN). */
    enum {
        TMS_REGISTRATION_OPEN = 0, /* anyone registers, as the original */
        TMS_REGISTRATION_ADMIN,    /* admins create users (POST /api/auth/users) */
        TMS_REGISTRATION_CLOSED,   /* only `tms user create` */
    } registration;
    /* auth.login_revokes_others=false: a login leaves the user's other tokens valid
     * (false, the default: each login ends them, as the original). */
    bool login_keeps_others;
} tms_auth_config_t;

/** Start the actor on loop (subscribed to compensate_user_deletion in group
 * compensation-group when a bus is given); it takes calls (tms_api_call_t) at its mailbox at once.
 * users and hashers are borrowed and must outlive the actor. Never NULL. */
tms_auth_t *tms_auth_start(uv_loop_t *loop, const tms_auth_config_t *cfg, tms_user_store_t *users,
                           tms_workpool_t *hashers);

/** The actor's mailbox: post tms_api_call_t with msg.op = TMS_STAGE_*. */
tms_mailbox_t *tms_auth_mailbox(tms_auth_t *auth);

/** On auth's loop thread, for a caller on that loop (the gateway): the authenticate
 * stage as a function call when it needs nothing but memory: the bearer token is in
 * the verified-token cache and its user in the user cache at the token's version.
 * Then call->principal and call->user are set as the stage's reply would set them and
 * it returns true. Otherwise (a miss, a revoked token, no token, stopping) false and
 * the call is untouched: post it to the auth actor's mailbox as before. */
bool tms_auth_authenticate_now(tms_auth_t *auth, tms_api_call_t *call);

/* The actor stops on a stop message (tms_stop_send, core/mailbox.h): calls and
 * compensations it holds finish first; tms_auth_free once it replied. */

/** Calls being worked on (waiting for the store or the hash pool). */
size_t tms_auth_inflight(tms_auth_t *auth);

/** The dummy hash the actor made or was given, for another worker's actor (valid
 * until tms_auth_free). */
const char *tms_auth_dummy_hash(tms_auth_t *auth);

/** Free once stopped, or once no call is in flight. Sets *auth NULL. */
void tms_auth_free(tms_auth_t **auth);

#endif
