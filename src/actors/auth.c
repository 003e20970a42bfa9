#include "actors/auth.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "core/alloc.h"
#include "core/api.h"
#include "core/clock.h"
#include "core/objectid.h"
#include "core/events.h"
#include "core/jwt.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/password.h"
#include "core/ratelimit.h"
#include "core/status.h"
#include "core/text.h"
#include "core/token_cache.h"
#include "core/user_cache.h"

#define PASSWORD_MIN TMS_PASSWORD_MIN
#define PASSWORD_MAX TMS_PASSWORD_MAX

struct tms_auth {
    uv_loop_t *loop;
    tms_user_cache_t *cache;
    bool own_cache;
    tms_token_cache_t *tokens;
    tms_mailbox_t *mailbox;
    tms_user_store_t *users;
    tms_user_reader_t *reader; /* the store's reader on this loop; NULL: none */
    tms_workpool_t *hashers;
    unsigned char key[512];
    size_t key_len;
    char issuer[128];
    int64_t token_ttl;
    unsigned long long opslimit;
    size_t memlimit;
    char dummy_hash[crypto_pwhash_STRBYTES]; /* verified for unknown emails */
    size_t inflight;
    tms_stopper_t stop;
    tms_event_bus_t *bus;
    tms_outbox_t *inbox;
    tms_relay_t *relay;
    tms_counter_t *restored, *restore_refused;
    tms_counter_t *logins_ok, *logins_failed, *registrations;
    size_t hash_per_address;
    uint64_t hash_queue_ms; /* 0: no limit */
    unsigned ipv6_prefix;
    tms_counter_t *hash_refused, *hash_expired;
    tms_ticket_book_t *tickets;
    bool own_tickets;
    tms_push_shared_t *push;
    int registration;        /* TMS_REGISTRATION_* */
    bool login_keeps_others; /* a login does not bump the token version */
};

/* A hashing job: runs on the hash pool with its own copies of the inputs. */
typedef struct hash_job {
    tms_job_t job;
    tms_auth_t *auth;
    tms_api_call_t *call;
    int verify; /* 1: verify password against hash (and rehash if weak); 0: hash */
    char password[PASSWORD_MAX + 1];
    size_t password_len;
    char hash[TMS_HASH_MAX + 1];  /* verify: stored hash */
    char fresh[TMS_HASH_MAX + 1]; /* hash / rehash result, "" if none */
    int ok;
    uint64_t expires_ns; /* uv_hrtime by which it must have left the queue; 0: never */
    int expired;         /* waited past expires_ns: not computed, answer 503 */
} hash_job_t;

static void on_message(void *owner, tms_msg_t *msg);

/* ---- replies ---------------------------------------------------------- */

static void finish(tms_auth_t *auth, tms_api_call_t *call)
{
    auth->inflight--;
    sodium_memzero(call->user.password_hash, sizeof(call->user.password_hash));
    tms_mailbox_reply(&call->msg);
    tms_stopper_check(&auth->stop, auth->mailbox, auth->inflight);
}

static void fail(tms_auth_t *auth, tms_api_call_t *call, tms_status_t code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void fail(tms_auth_t *auth, tms_api_call_t *call, tms_status_t code, const char *fmt, ...)
{
    va_list ap;
    call->err.code = code;
    va_start(ap, fmt);
    vsnprintf(call->err.message, sizeof(call->err.message), fmt, ap);
    va_end(ap);
    finish(auth, call);
}

/* True (and the call answered) when nobody waits for it any more: checked before
 * every store operation and password hash of a call, so an abandoned call costs
 * neither I/O nor hashing time. */
static bool abandoned(tms_auth_t *auth, tms_api_call_t *call)
{
    const char *why;
    tms_status_t code;
    if (!tms_api_call_abandoned(call, uv_now(auth->loop)))
        return false;
    code = tms_api_abandoned_status(call, &why);
    tms_log_debug("call_abandoned", "rid=%s op=%s why=%s", call->request_id,
                  tms_api_op_name(call->op), why);
    fail(auth, call, code, "%s", why);
    return true;
}

/* ---- the user store -------------------------------------------------- */

typedef void (*store_cont_fn)(tms_auth_t *auth, tms_api_call_t *call, tms_user_op_t *op);

typedef struct store_req {
    tms_user_op_t op;
    tms_auth_t *auth;
    store_cont_fn then;
} store_req_t;

static void free_store_req(tms_msg_t *msg)
{
    free(msg);
}

static void on_store_reply(tms_msg_t *msg)
{
    store_req_t *req = (store_req_t *)msg;
    tms_api_call_t *call = msg->ctx;
    req->then(req->auth, call, &req->op);
    sodium_memzero(req, sizeof(*req));
    free(req);
}

/* Sends one store operation for call; `then` runs on this loop with the result. */
static void store(tms_auth_t *auth, tms_api_call_t *call, tms_user_op_kind_t kind, const char *key,
                  const tms_user_t *user, const char *new_hash, store_cont_fn then)
{
    store_req_t *req = tms_new(store_req_t);
    tms_user_op_t *op = &req->op;
    if (abandoned(auth, call)) {
        free(req);
        return;
    }
    req->auth = auth;
    req->then = then;
    op->msg.op = (int)kind;
    op->msg.reply_to = auth->mailbox;
    op->msg.cont = on_store_reply;
    op->msg.ctx = call;
    op->msg.free_fn = free_store_req;
    if (key)
        snprintf(op->key, sizeof(op->key), "%s", key);
    if (user)
        op->user = *user;
    if (new_hash)
        snprintf(op->new_hash, sizeof(op->new_hash), "%s", new_hash);
    /* A lookup by id the store's reader answers now: no queue, no thread hop. */
    if (kind == TMS_USER_GET_BY_ID && auth->reader && auth->reader->read(auth->reader, op) == 0) {
        on_store_reply(&op->msg);
        return;
    }
    if (tms_user_store_submit(auth->users, &op) != 0) {
        free(req);
        fail(auth, call, TMS_UNAVAILABLE, "user store is overloaded, retry later");
    }
}

/* Store errors other than the expected ones are reported without internals. */
static int store_failed(tms_auth_t *auth, tms_api_call_t *call, tms_user_op_t *op)
{
    if (op->err.code == TMS_OK)
        return 0;
    if (op->err.code == TMS_UNAVAILABLE)
        fail(auth, call, TMS_UNAVAILABLE, "user store unavailable, retry later");
    else
        fail(auth, call, TMS_INTERNAL, "internal error");
    return 1;
}

/* ---- the hash pool ---------------------------------------------------- */

typedef void (*hash_cont_fn)(tms_auth_t *auth, tms_api_call_t *call, hash_job_t *job);

static void run_hash_job(tms_job_t *job)
{
    hash_job_t *h = (hash_job_t *)job;
    h->fresh[0] = '\0';
    if (h->expires_ns && uv_hrtime() > h->expires_ns) {
        h->expired = 1;
        h->ok = 0;
    } else if (h->verify) {
        h->ok = tms_password_verify(h->password, h->password_len, h->hash) == 1;
        if (h->ok &&
            tms_password_needs_rehash(h->hash, h->auth->opslimit, h->auth->memlimit) == 1 &&
            tms_password_hash(h->password, h->password_len, h->auth->opslimit, h->auth->memlimit,
                              h->fresh, sizeof(h->fresh)) != 0)
            h->fresh[0] = '\0';
    } else {
        h->ok = tms_password_hash(h->password, h->password_len, h->auth->opslimit,
                                  h->auth->memlimit, h->fresh, sizeof(h->fresh)) == 0;
    }
    sodium_memzero(h->password, sizeof(h->password));
}

static void free_hash_job(tms_msg_t *msg)
{
    sodium_memzero(msg, sizeof(hash_job_t));
    free(msg);
}

static void hash_submit(tms_auth_t *auth, tms_api_call_t *call, int verify, const char *hash,
                        tms_cont_fn cont)
{
    hash_job_t *h = tms_new(hash_job_t);
    tms_job_t *job;
    char key[TMS_ADDR_KEY_MAX];
    int rc;
    if (abandoned(auth, call)) {
        free(h);
        return;
    }
    job = &h->job;
    h->auth = auth;
    h->call = call;
    h->verify = verify;
    h->password_len = strlen(call->password);
    memcpy(h->password, call->password, h->password_len);
    if (hash)
        snprintf(h->hash, sizeof(h->hash), "%s", hash);
    job->run = run_hash_job;
    if (auth->hash_queue_ms)
        h->expires_ns = uv_hrtime() + auth->hash_queue_ms * 1000000u;
    job->msg.reply_to = auth->mailbox;
    job->msg.cont = cont;
    job->msg.ctx = call;
    job->msg.free_fn = free_hash_job;
    /* A hash costs tens of ms of a hashing thread: one address (an IPv6 /64) may only
     * have a few queued or running, so a few addresses cannot fill the queue and have
     * every other login answered 503. */
    tms_ratelimit_addr_key(call->client_addr, auth->ipv6_prefix, key, sizeof(key));
    rc =
        tms_workpool_submit_keyed(auth->hashers, &job, key[0] ? key : NULL, auth->hash_per_address);
    if (rc != 0) {
        free_hash_job(&h->job.msg);
        if (rc == -TMS_ERANGE) {
            tms_counter_add(auth->hash_refused, 1);
            call->ratelimit.retry_after_s = 1;
            fail(auth, call, TMS_RESOURCE_EXHAUSTED,
                 "too many password checks at once from this address, retry in 1 s");
            return;
        }
        fail(auth, call, TMS_UNAVAILABLE, "server busy, retry later");
    }
}

/* A hash that waited past auth.hash_queue_ms was not computed: 503, and the job is
 * freed. Returns 1 then. */
static int hash_expired(tms_auth_t *auth, tms_api_call_t *call, hash_job_t *h)
{
    if (!h->expired)
        return 0;
    free_hash_job(&h->job.msg);
    tms_counter_add(auth->hash_expired, 1);
    fail(auth, call, TMS_UNAVAILABLE, "password checks are queued too long, retry later");
    return 1;
}

/* ---- validation ------------------------------------------------------- */

static int check_credentials(tms_auth_t *auth, tms_api_call_t *call)
{
    const char *why = NULL;
    size_t plen;
    if (!call->email || !call->password) {
        fail(auth, call, TMS_INVALID_ARGUMENT, "email and password are required");
        return -1;
    }
    if (tms_email_normalize(call->email, &why) != 0) {
        fail(auth, call, TMS_INVALID_ARGUMENT, "%s", why);
        return -1;
    }
    plen = strlen(call->password);
    if (plen < PASSWORD_MIN || plen > PASSWORD_MAX) {
        fail(auth, call, TMS_INVALID_ARGUMENT, "password must be 8 to 256 bytes");
        return -1;
    }
    return 0;
}

static void issue_token(tms_auth_t *auth, tms_api_call_t *call)
{
    char *token =
        tms_jwt_sign(auth->key, auth->key_len, auth->issuer, call->user.id, call->user.role,
                     call->user.token_version, tms_now_ms() / 1000, auth->token_ttl);
    if (!token) {
        tms_log_error("jwt_sign_failed", "user=%s", call->user.id);
        fail(auth, call, TMS_INTERNAL, "internal error");
        return;
    }
    call->token = tms_api_call_strdup(call, token); /* the call's strings are in its arena */
    sodium_memzero(token, strlen(token));
    free(token);
    finish(auth, call);
}

/* ---- register --------------------------------------------------------- */

static void register_created(tms_auth_t *auth, tms_api_call_t *call, tms_user_op_t *op)
{
    if (op->err.code == TMS_ALREADY_EXISTS) {
        fail(auth, call, TMS_ALREADY_EXISTS, "email already registered");
        return;
    }
    if (store_failed(auth, call, op))
        return;
    call->user = op->user;
    tms_counter_add(auth->registrations, 1);
    if (call->op == TMS_API_USER_CREATE) { /* an admin made it: no token for the admin */
        tms_log_info("user_registered", "user=%s by=%s", call->user.id, call->principal.user_id);
        memset(call->user.password_hash, 0, sizeof(call->user.password_hash));
        finish(auth, call);
        return;
    }
    tms_log_info("user_registered", "user=%s", call->user.id);
    issue_token(auth, call);
}

static void register_hashed(tms_msg_t *msg)
{
    hash_job_t *h = (hash_job_t *)msg;
    tms_api_call_t *call = h->call;
    tms_auth_t *auth = h->auth;
    tms_user_t user;
    if (hash_expired(auth, call, h))
        return;
    if (!h->ok) {
        free_hash_job(msg);
        tms_log_error("password_hash_failed", "rid=%s", call->request_id);
        fail(auth, call, TMS_INTERNAL, "internal error");
        return;
    }
    memset(&user, 0, sizeof(user));
    tms_objectid_new(user.id);
    snprintf(user.email, sizeof(user.email), "%s", call->email);
    snprintf(user.role, sizeof(user.role), "user");
    snprintf(user.password_hash, sizeof(user.password_hash), "%s", h->fresh);
    user.token_version = 0;
    user.created_at_ms = tms_now_ms();
    free_hash_job(msg);
    store(auth, call, TMS_USER_CREATE, NULL, &user, NULL, register_created);
    sodium_memzero(&user, sizeof(user));
}

static void do_register(tms_auth_t *auth, tms_api_call_t *call)
{
    if (call->op == TMS_API_REGISTER && auth->registration != TMS_REGISTRATION_OPEN) {
        fail(auth, call, TMS_PERMISSION_DENIED,
             auth->registration == TMS_REGISTRATION_ADMIN
                 ? "registration is closed: an admin creates accounts (POST /api/auth/users)"
                 : "registration is closed: ask the operator for an account");
        return;
    }
    if (call->op == TMS_API_USER_CREATE) {
        if (!tms_op_permits(tms_op_get(call->op), &call->principal, NULL)) {
            fail(auth, call, TMS_PERMISSION_DENIED, "only an admin may create users");
            return;
        }
        if (auth->registration == TMS_REGISTRATION_CLOSED) {
            fail(auth, call, TMS_PERMISSION_DENIED,
                 "registration is closed: accounts are made with `tms user create`");
            return;
        }
    }
    if (check_credentials(auth, call) == 0)
        hash_submit(auth, call, 0, NULL, register_hashed);
}

/* ---- login ------------------------------------------------------------ */

static void login_bumped(tms_auth_t *auth, tms_api_call_t *call, tms_user_op_t *op)
{
    if (op->err.code == TMS_NOT_FOUND) { /* deleted between lookup and bump */
        tms_counter_add(auth->logins_failed, 1);
        fail(auth, call, TMS_UNAUTHENTICATED, "invalid email or password");
        return;
    }
    if (store_failed(auth, call, op))
        return;
    call->user = op->user;
    tms_user_cache_put(auth->cache, &op->user, uv_now(auth->loop));
    tms_counter_add(auth->logins_ok, 1);
    issue_token(auth, call);
}

static void login_verified(tms_msg_t *msg)
{
    hash_job_t *h = (hash_job_t *)msg;
    tms_api_call_t *call = h->call;
    tms_auth_t *auth = h->auth;
    char fresh[TMS_HASH_MAX + 1];
    int ok = h->ok && call->user.id[0] != '\0';
    if (hash_expired(auth, call, h))
        return;
    snprintf(fresh, sizeof(fresh), "%s", h->fresh);
    free_hash_job(msg);
    if (!ok) {
        tms_counter_add(auth->logins_failed, 1);
        fail(auth, call, TMS_UNAUTHENTICATED, "invalid email or password");
        return;
    }
    /* The version bump kills older tokens; a legacy (bcrypt) or weak hash is replaced
     * in the same write. With auth.login_revokes_others=false the token carries the
     * current version and nothing is written (but for a rehash, whose write is a bump:
     * once per legacy user). */
    if (fresh[0])
        tms_log_info("password_rehashed", "user=%s", call->user.id);
    if (auth->login_keeps_others && !fresh[0]) {
        tms_user_cache_put(auth->cache, &call->user, uv_now(auth->loop));
        tms_counter_add(auth->logins_ok, 1);
        issue_token(auth, call);
        return;
    }
    store(auth, call, TMS_USER_BUMP_VERSION, call->user.id, NULL, fresh, login_bumped);
    sodium_memzero(fresh, sizeof(fresh));
}

static void login_found(tms_auth_t *auth, tms_api_call_t *call, tms_user_op_t *op)
{
    if (op->err.code == TMS_NOT_FOUND) {
        /* Verify against a dummy hash anyway so that unknown emails take as long as
         * wrong passwords. */
        memset(&call->user, 0, sizeof(call->user));
        hash_submit(auth, call, 1, auth->dummy_hash, login_verified);
        return;
    }
    if (store_failed(auth, call, op))
        return;
    call->user = op->user;
    hash_submit(auth, call, 1, op->user.password_hash, login_verified);
}

static void do_login(tms_auth_t *auth, tms_api_call_t *call)
{
    if (check_credentials(auth, call) == 0)
        store(auth, call, TMS_USER_GET_BY_EMAIL, call->email, NULL, NULL, login_found);
}

/* ---- authentication --------------------------------------------------- */

static void authenticated(tms_auth_t *auth, tms_api_call_t *call, tms_user_op_t *op)
{
    int64_t claimed = call->user.token_version;
    if (op->err.code == TMS_NOT_FOUND) {
        fail(auth, call, TMS_UNAUTHENTICATED, "user no longer exists");
        return;
    }
    if (store_failed(auth, call, op))
        return;
    if (op->user.token_version != claimed) {
        fail(auth, call, TMS_UNAUTHENTICATED, "token revoked");
        return;
    }
    call->principal.authenticated = true;
    snprintf(call->principal.user_id, sizeof(call->principal.user_id), "%s", op->user.id);
    snprintf(call->principal.role, sizeof(call->principal.role), "%s", op->user.role);
    snprintf(call->principal.email, sizeof(call->principal.email), "%s", op->user.email);
    call->user = op->user;
    finish(auth, call);
}

/* A store answer refreshes the cache; a cache hit must not, or a change made by
 * another writer would never be seen while requests keep coming. */
static void authenticated_by_store(tms_auth_t *auth, tms_api_call_t *call, tms_user_op_t *op)
{
    if (op->err.code == TMS_OK)
        tms_user_cache_put(auth->cache, &op->user, uv_now(auth->loop));
    authenticated(auth, call, op);
}

/* Verifies the bearer token: signature, alg, exp and iss here, then the token
 * version against the store, so logout and login revoke at once. */
static void check_user(tms_auth_t *auth, tms_api_call_t *call, const char *sub,
                       int64_t token_version, int64_t exp_s);

/* A stream ticket instead of the token (only where the operation takes one): checked
 * like a token, its user and token version included, and usable once. */
static void authenticate_ticket(tms_auth_t *auth, tms_api_call_t *call)
{
    tms_ticket_claims_t c;
    int64_t now_ms = tms_now_ms();
    int rc = tms_ticket_verify(auth->key, auth->key_len, call->ticket, now_ms, &c);
    if (rc == -TMS_ERANGE) {
        fail(auth, call, TMS_UNAUTHENTICATED, "ticket expired");
        return;
    }
    if (rc != 0) {
        fail(auth, call, TMS_UNAUTHENTICATED, "invalid ticket");
        return;
    }
    rc = tms_ticket_book_use(auth->tickets, &c, now_ms);
    if (rc == -TMS_EFULL) {
        fail(auth, call, TMS_UNAVAILABLE, "too many tickets in use, retry later");
        return;
    }
    if (rc != 0) {
        fail(auth, call, TMS_UNAUTHENTICATED, "ticket already used");
        return;
    }
    check_user(auth, call, c.sub, c.token_version, c.token_exp_s);
}

static void do_authenticate(tms_auth_t *auth, tms_api_call_t *call)
{
    tms_jwt_claims_t claims;
    char why[128];
    const tms_op_t *op = tms_op_get(call->op);
    if ((!call->bearer || !call->bearer[0]) && call->ticket && op && (op->args & TMS_ARGS_WATCH)) {
        authenticate_ticket(auth, call);
        return;
    }
    if (!call->bearer || !call->bearer[0]) {
        fail(auth, call, TMS_UNAUTHENTICATED, "missing bearer token");
        return;
    }
    int64_t now_s = tms_now_ms() / 1000;
    if (!tms_token_cache_get(auth->tokens, call->bearer, now_s, &claims)) {
        if (tms_jwt_verify(auth->key, auth->key_len, auth->issuer, call->bearer, now_s, &claims,
                           why, sizeof(why)) != TMS_OK) {
            fail(auth, call, TMS_UNAUTHENTICATED, "%s", why[0] ? why : "invalid token");
            return;
        }
        tms_token_cache_put(auth->tokens, call->bearer, &claims);
    }
    check_user(auth, call, claims.sub, claims.token_version, claims.exp);
}

/* The credential is genuine: its user must exist with that token version. */
static void check_user(tms_auth_t *auth, tms_api_call_t *call, const char *sub,
                       int64_t token_version, int64_t exp_s)
{
    memset(&call->user, 0, sizeof(call->user));
    call->user.token_version = token_version;
    call->principal.expires_at_s = exp_s;
    {
        /* Versions only grow: a cached version above the claim proves the token
         * revoked, an equal one proves it current; a lower one may be stale. */
        tms_user_op_t hit;
        if (tms_user_cache_get(auth->cache, sub, uv_now(auth->loop), &hit.user) &&
            hit.user.token_version >= token_version) {
            hit.err.code = TMS_OK;
            authenticated(auth, call, &hit);
            return;
        }
    }
    store(auth, call, TMS_USER_GET_BY_ID, sub, NULL, NULL, authenticated_by_store);
}

/* A ticket for the caller's streams: made from the token the call came with (its
 * version and end), so that logging out revokes it too. */
static void issue_ticket(tms_auth_t *auth, tms_api_call_t *call)
{
    tms_ticket_claims_t c = {0};
    char text[TMS_TICKET_MAX];
    int64_t now_ms = tms_now_ms();
    snprintf(c.sub, sizeof(c.sub), "%s", call->principal.user_id);
    c.token_version = call->user.token_version;
    c.token_exp_s = call->principal.expires_at_s;
    c.exp_ms = now_ms + TMS_TICKET_TTL_MS;
    if (c.token_exp_s && c.exp_ms > c.token_exp_s * 1000)
        c.exp_ms = c.token_exp_s * 1000; /* never outlives its token */
    randombytes_buf(c.nonce, sizeof(c.nonce));
    if (tms_ticket_mint(auth->key, auth->key_len, &c, text) != 0) {
        fail(auth, call, TMS_INTERNAL, "internal error");
        return;
    }
    call->token = tms_api_call_strdup(call, text);
    sodium_memzero(text, sizeof(text));
    call->ticket_expires_ms = c.exp_ms;
    finish(auth, call);
}

bool tms_auth_authenticate_now(tms_auth_t *auth, tms_api_call_t *call)
{
    tms_jwt_claims_t claims;
    tms_user_t user;
    if (tms_stopping(&auth->stop) || !call->bearer || !call->bearer[0] ||
        !tms_token_cache_get(auth->tokens, call->bearer, tms_now_ms() / 1000, &claims))
        return false;
    /* As do_authenticate's cache hit, but only for the current version: a revoked
     * token is refused by the actor, in its words. */
    if (!tms_user_cache_get(auth->cache, claims.sub, uv_now(auth->loop), &user) ||
        user.token_version != claims.token_version)
        return false;
    sodium_memzero(user.password_hash, sizeof(user.password_hash));
    call->principal.authenticated = true;
    tms_text_copy(call->principal.user_id, sizeof(call->principal.user_id), user.id);
    tms_text_copy(call->principal.role, sizeof(call->principal.role), user.role);
    tms_text_copy(call->principal.email, sizeof(call->principal.email), user.email);
    call->user = user;
    return true;
}

/* ---- operations on a verified principal ------------------------------ */

/* The userId a trusted peer's call names (its op's legacy rule MESSAGE_USER), checked
 * as the original auth-service did and refused in its words: its clients match on
 * them (the original notifier skips an event on "Invalid userId provided" only). */
static int legacy_target(tms_auth_t *auth, tms_api_call_t *call)
{
    if (tms_op_get(call->op)->legacy != TMS_LEGACY_MESSAGE_USER) {
        fail(auth, call, TMS_UNAUTHENTICATED, "missing bearer token");
        return 0;
    }
    if (call->target_id[0] == '\0') {
        fail(auth, call, TMS_INVALID_ARGUMENT, "User ID is required");
        return 0;
    }
    if (!tms_objectid_valid(call->target_id)) {
        fail(auth, call, TMS_INVALID_ARGUMENT, "Invalid userId provided");
        return 0;
    }
    return 1;
}

/* NOT_FOUND for the target user, in the original's words to a trusted peer. */
static void target_not_found(tms_auth_t *auth, tms_api_call_t *call)
{
    if (call->principal.trusted)
        fail(auth, call, TMS_NOT_FOUND, "User not found");
    else
        fail(auth, call, TMS_NOT_FOUND, "user %s not found", call->target_id);
}

/* Resolves the target of logout/delete: empty means self; others need admin. */
static int allowed_target(tms_auth_t *auth, tms_api_call_t *call)
{
    if (call->principal.trusted)
        return legacy_target(auth, call);
    if (call->target_id[0] == '\0')
        snprintf(call->target_id, sizeof(call->target_id), "%s", call->principal.user_id);
    if (!tms_objectid_valid(call->target_id)) {
        fail(auth, call, TMS_INVALID_ARGUMENT, "invalid user id");
        return 0;
    }
    if (!tms_op_permits(
            tms_op_get(call->op), &call->principal,
            &(tms_op_subject_t){.self = strcmp(call->target_id, call->principal.user_id) == 0})) {
        fail(auth, call, TMS_PERMISSION_DENIED, "only the user or an admin may do this");
        return 0;
    }
    return 1;
}

static void logout_done(tms_auth_t *auth, tms_api_call_t *call, tms_user_op_t *op)
{
    if (op->err.code == TMS_NOT_FOUND) {
        if (call->principal.trusted)
            target_not_found(auth, call);
        else
            fail(auth, call, TMS_NOT_FOUND, "user not found");
        return;
    }
    if (store_failed(auth, call, op))
        return;
    call->flag = true;
    tms_user_cache_put(auth->cache, &op->user, uv_now(auth->loop));
    tms_log_info("user_logged_out", "user=%s by=%s", op->user.id,
                 call->principal.trusted ? "trusted_peer" : call->principal.user_id);
    tms_push_revoked(auth->push, op->user.id);
    finish(auth, call);
}

static void deleted(tms_auth_t *auth, tms_api_call_t *call, tms_user_op_t *op)
{
    if (op->err.code == TMS_NOT_FOUND) {
        target_not_found(auth, call);
        return;
    }
    if (store_failed(auth, call, op))
        return;
    call->flag = true;
    /* Not a removal but the user one version later, for user_cache_ms: every token
     * dies at once in every worker, and a lookup another worker sent before the
     * delete cannot put the user back when its answer comes after (a restore by the
     * saga brings the user back at this very version). */
    op->user.token_version++;
    tms_user_cache_put(auth->cache, &op->user, uv_now(auth->loop));
    tms_log_info("user_deleted", "user=%s by=%s", op->user.id,
                 call->principal.trusted ? "trusted_peer" : call->principal.user_id);
    if (auth->relay) /* the store wrote user_deleted into its outbox with the delete */
        tms_relay_kick(auth->relay);
    tms_push_revoked(auth->push, op->user.id);
    finish(auth, call);
}

static void looked_up(tms_auth_t *auth, tms_api_call_t *call, tms_user_op_t *op)
{
    if (op->err.code == TMS_NOT_FOUND) {
        if (call->op == TMS_API_USER_EXISTS) {
            call->flag = false;
            finish(auth, call);
        } else {
            target_not_found(auth, call);
        }
        return;
    }
    if (store_failed(auth, call, op))
        return;
    call->flag = true;
    call->user = op->user;
    finish(auth, call);
}

static void do_execute(tms_auth_t *auth, tms_api_call_t *call)
{
    switch (call->op) {
    case TMS_API_REGISTER:
    case TMS_API_USER_CREATE:
        do_register(auth, call);
        return;
    case TMS_API_LOGIN:
        do_login(auth, call);
        return;
    case TMS_API_VERIFY_TOKEN:
        do_authenticate(auth, call);
        return;
    case TMS_API_ME:
    case TMS_API_TASK_WATCH: /* the stream itself is the push hub's (core/push.h) */
        /* authenticate already loaded the user */
        if (call->task_id < 0 || call->since < 0)
            fail(auth, call, TMS_INVALID_ARGUMENT, "id and since must be ids");
        else
            finish(auth, call);
        return;
    case TMS_API_TASK_EVENTS_TICKET:
        issue_ticket(auth, call);
        return;
    case TMS_API_LOGOUT:
        if (allowed_target(auth, call))
            store(auth, call, TMS_USER_BUMP_VERSION, call->target_id, NULL, NULL, logout_done);
        return;
    case TMS_API_DELETE_USER:
        if (allowed_target(auth, call))
            store(auth, call, TMS_USER_DELETE, call->target_id, NULL, NULL, deleted);
        return;
    case TMS_API_USER_EXISTS:
    case TMS_API_USER_INFO:
        if (call->principal.trusted) {
            if (legacy_target(auth, call))
                store(auth, call, TMS_USER_GET_BY_ID, call->target_id, NULL, NULL, looked_up);
            return;
        }
        /* Ids of creators and assignees are in every task a user can see: without
         * this, anyone could collect every user's email. */
        if (!tms_op_permits(tms_op_get(call->op), &call->principal,
                            &(tms_op_subject_t){
                                .self = strcmp(call->target_id, call->principal.user_id) == 0})) {
            fail(auth, call, TMS_PERMISSION_DENIED,
                 "only the user, an admin or a TMS service may read a user's details");
            return;
        }
        if (!tms_objectid_valid(call->target_id)) {
            if (call->op == TMS_API_USER_EXISTS) {
                call->flag = false;
                finish(auth, call);
            } else {
                fail(auth, call, TMS_INVALID_ARGUMENT, "invalid user id");
            }
            return;
        }
        store(auth, call, TMS_USER_GET_BY_ID, call->target_id, NULL, NULL, looked_up);
        return;
    default:
        fail(auth, call, TMS_UNIMPLEMENTED, "operation not served by auth");
        return;
    }
}

/* ---- the saga: compensate_user_deletion -------------------------------- */

#define COMPENSATION_GROUP "compensation-group"

typedef struct comp_job {
    tms_auth_t *auth;
    tms_delivery_t *delivery;
    tms_user_t user;
    char event_id[37];
} comp_job_t;

#define USER_STORE "user store" /* what compensation needs: its failures are transient */

static void comp_ack(comp_job_t *job, tms_ack_t out)
{
    tms_auth_t *auth = job->auth;
    auth->bus->ack(auth->bus, &job->delivery, out);
    auth->inflight--;
    sodium_memzero(job, sizeof(*job));
    free(job);
    tms_stopper_check(&auth->stop, auth->mailbox, auth->inflight);
}

static void on_comp_recorded(tms_msg_t *msg)
{
    tms_outbox_op_t *op = (tms_outbox_op_t *)msg;
    comp_job_t *job = msg->ctx;
    tms_ack_t out = op->err.code == TMS_OK
                        ? tms_ack_ok()
                        : tms_ack_transient(USER_STORE, "inbox record failed", 0);
    tms_outbox_op_free(&op);
    comp_ack(job, out);
}

static void comp_inbox(comp_job_t *job, tms_outbox_op_kind_t kind, tms_cont_fn cont)
{
    tms_outbox_op_t *op = tms_inbox_op_one(kind, COMPENSATION_GROUP, job->event_id);
    op->msg.reply_to = job->auth->mailbox;
    op->msg.cont = cont;
    op->msg.ctx = job;
    if (tms_outbox_submit(job->auth->inbox, &op) != 0) {
        tms_outbox_op_free(&op);
        comp_ack(job, tms_ack_transient(USER_STORE, "inbox queue full or closed", 0));
    }
}

static void on_restored(tms_msg_t *msg)
{
    store_req_t *req = (store_req_t *)msg;
    comp_job_t *job = msg->ctx;
    tms_status_t code = req->op.err.code;
    char why[sizeof(req->op.err.message)];
    snprintf(why, sizeof(why), "%s", req->op.err.message);
    sodium_memzero(req, sizeof(*req)); /* the restored user's password hash */
    free(req);
    if (code == TMS_ALREADY_EXISTS) {
        /* Restored by an earlier delivery, or the email was registered again since:
         * either way there is nothing left to restore. */
        tms_log_warn("user_restore_skipped", "user=%s reason=exists", job->user.id);
    } else if (code == TMS_NOT_FOUND || code == TMS_FAILED_PRECONDITION) {
        /* The event is not what this side wrote when it deleted the user (no
         * tombstone, or another email or role): whoever wrote it does not get to
         * choose whom TMS brings back. Handled, so it is not retried. */
        tms_counter_add(job->auth->restore_refused, 1);
        tms_log_error("user_restore_refused", "user=%s event_id=%s reason=\"%s\"", job->user.id,
                      job->event_id, why);
    } else if (code != TMS_OK) {
        comp_ack(job, tms_ack_transient(USER_STORE, why, 0));
        return;
    } else {
        tms_counter_add(job->auth->restored, 1);
        tms_log_warn("user_restored", "user=%s", job->user.id);
    }
    comp_inbox(job, TMS_INBOX_RECORD, on_comp_recorded);
}

static void on_comp_seen(tms_msg_t *msg)
{
    tms_outbox_op_t *op = (tms_outbox_op_t *)msg;
    comp_job_t *job = msg->ctx;
    store_req_t *req;
    tms_user_op_t *uop;
    int failed = op->err.code != TMS_OK, seen = op->ids_seen[0];
    tms_outbox_op_free(&op);
    if (failed || seen) {
        comp_ack(job,
                 failed ? tms_ack_transient(USER_STORE, "inbox check failed", 0) : tms_ack_ok());
        return;
    }
    req = tms_new(store_req_t);
    req->auth = job->auth;
    uop = &req->op;
    uop->msg.op = TMS_USER_RESTORE;
    uop->msg.reply_to = job->auth->mailbox;
    uop->msg.cont = on_restored;
    uop->msg.ctx = job;
    uop->msg.free_fn = free_store_req;
    /* The event's id, email and role; the store restores from the tombstone it wrote
     * at the delete and only checks these against it. */
    uop->user = job->user;
    uop->user.password_hash[0] = '\0';
    if (tms_user_store_submit(job->auth->users, &uop) != 0) {
        free(req);
        comp_ack(job, tms_ack_transient(USER_STORE, "user store queue full or closed", 0));
    }
}

static void on_compensate(tms_auth_t *auth, tms_delivery_t *d)
{
    comp_job_t *job = tms_new(comp_job_t);
    job->auth = auth;
    job->delivery = d;
    auth->inflight++;
    if (tms_event_user_parse(d->payload, &job->user, job->event_id) != 0 ||
        !tms_objectid_valid(job->user.id)) {
        if (d->attempt == 1)
            tms_log_error("event_malformed", "topic=%s", d->topic);
        comp_ack(job, tms_ack_permanent("malformed event"));
        return;
    }
    if (!job->event_id[0]) /* the original task-service sends none */
        tms_event_id_derive(d->topic, d->payload, d->payload_len, job->event_id);
    comp_inbox(job, TMS_INBOX_SEEN, on_comp_seen);
}

static void on_message(void *owner, tms_msg_t *msg)
{
    tms_auth_t *auth = owner;
    tms_api_call_t *call = (tms_api_call_t *)msg;
    if (msg->kind == TMS_MSG_STOP) {
        tms_stopper_hold(&auth->stop, msg);
        tms_stopper_check(&auth->stop, auth->mailbox, auth->inflight);
        return;
    }
    if (msg->op == TMS_EVENT_DELIVERY) {
        tms_delivery_t *d = (tms_delivery_t *)msg;
        if (tms_stopping(&auth->stop)) /* comes again after a restart */
            auth->bus->ack(auth->bus, &d, tms_ack_transient("auth", "stopping", 0));
        else
            on_compensate(auth, d);
        return;
    }
    auth->inflight++;
    if (tms_stopping(&auth->stop)) {
        fail(auth, call, TMS_UNAVAILABLE, "server stopping, retry later");
        return;
    }
    if (msg->op == TMS_STAGE_AUTHENTICATE)
        do_authenticate(auth, call);
    else
        do_execute(auth, call);
}

tms_auth_t *tms_auth_start(uv_loop_t *loop, const tms_auth_config_t *cfg, tms_user_store_t *users,
                           tms_workpool_t *hashers)
{
    tms_auth_t *auth = tms_new(tms_auth_t);
    const char dummy[] = "dummy password for timing";
    auth->users = users;
    if (users && users->reader_open)
        auth->reader = users->reader_open(users, loop);
    auth->hashers = hashers;
    auth->loop = loop;
    auth->own_cache = cfg->user_cache == NULL;
    auth->cache =
        cfg->user_cache ? cfg->user_cache : tms_user_cache_new(cfg->user_cache_ms, 100000);
    auth->tokens = tms_token_cache_new(20000);
    auth->push = cfg->push;
    auth->own_tickets = cfg->tickets == NULL;
    auth->tickets = cfg->tickets ? cfg->tickets : tms_ticket_book_new(100000);
    auth->key_len = cfg->jwt_key_len < sizeof(auth->key) ? cfg->jwt_key_len : sizeof(auth->key);
    memcpy(auth->key, cfg->jwt_key, auth->key_len);
    snprintf(auth->issuer, sizeof(auth->issuer), "%s", cfg->issuer);
    auth->token_ttl = cfg->token_ttl;
    auth->opslimit = cfg->argon2_opslimit;
    auth->memlimit = cfg->argon2_memlimit;
    /* Once at start, before the loop serves anyone. */
    if (cfg->dummy_hash)
        snprintf(auth->dummy_hash, sizeof(auth->dummy_hash), "%s", cfg->dummy_hash);
    else if (tms_password_hash(dummy, sizeof(dummy) - 1, auth->opslimit, auth->memlimit,
                               auth->dummy_hash, sizeof(auth->dummy_hash)) != 0)
        tms_oom(__FILE__, __LINE__);
    auth->mailbox = tms_mailbox_new(loop, "auth", cfg->mailbox_capacity, on_message, auth);
    auth->bus = cfg->bus;
    auth->inbox = cfg->inbox;
    auth->relay = cfg->relay;
    auth->restored =
        tms_metrics_counter("tms_saga_total", "delete-user saga outcomes", "outcome=\"restored\"");
    auth->restore_refused = tms_metrics_counter("tms_saga_total", "delete-user saga outcomes",
                                                "outcome=\"restore_refused\"");
    if (auth->bus && auth->inbox &&
        auth->bus->subscribe(auth->bus, TMS_TOPIC_COMPENSATE, COMPENSATION_GROUP, auth->mailbox))
        tms_log_error("subscribe_failed", "topic=%s group=%s", TMS_TOPIC_COMPENSATE,
                      COMPENSATION_GROUP);
    auth->logins_ok =
        tms_metrics_counter("tms_auth_logins_total", "logins by outcome", "outcome=\"ok\"");
    auth->logins_failed =
        tms_metrics_counter("tms_auth_logins_total", "logins by outcome", "outcome=\"failed\"");
    auth->registrations =
        tms_metrics_counter("tms_auth_registrations_total", "accounts registered", "");
    auth->hash_per_address = cfg->hash_per_address;
    auth->hash_queue_ms = cfg->hash_queue_ms;
    auth->hash_expired = tms_metrics_counter(
        "tms_auth_hash_expired_total",
        "registers and logins answered 503 because their password hash waited longer than "
        "auth.hash_queue_ms in the queue",
        "");
    auth->ipv6_prefix = cfg->ipv6_prefix ? cfg->ipv6_prefix : 64;
    auth->registration = cfg->registration;
    auth->login_keeps_others = cfg->login_keeps_others;
    auth->hash_refused = tms_metrics_counter(
        "tms_auth_hash_refused_total",
        "registers and logins refused because their address had auth.hash_per_address "
        "password hashes queued or running",
        "");
    tms_mailbox_export_depth(auth->mailbox);
    return auth;
}

tms_mailbox_t *tms_auth_mailbox(tms_auth_t *auth)
{
    return auth->mailbox;
}

size_t tms_auth_inflight(tms_auth_t *auth)
{
    return auth->inflight;
}

const char *tms_auth_dummy_hash(tms_auth_t *auth)
{
    return auth->dummy_hash;
}

void tms_auth_free(tms_auth_t **pauth)
{
    tms_auth_t *auth = *pauth;
    if (!auth)
        return;
    *pauth = NULL;
    tms_mailbox_free(&auth->mailbox);
    if (auth->reader)
        auth->reader->close(auth->reader);
    if (auth->own_cache)
        tms_user_cache_free(&auth->cache);
    tms_token_cache_free(&auth->tokens);
    if (auth->own_tickets)
        tms_ticket_book_free(&auth->tickets);
    sodium_memzero(auth->key, sizeof(auth->key));
    free(auth);
}
