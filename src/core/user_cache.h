/* A small cache of users by id for the auth actor, so that verifying a token does not
 * cost a store round trip on every request. Entries live ttl_ms; the actor updates
 * them on its own writes (login, logout, delete), so within one process a change is
 * seen at once and a change made elsewhere (another instance, the CLI) within ttl_ms.
 * One cache serves the auth actors of every worker loop of the process, so that a
 * logout on one worker is seen by the others at once: every call takes one mutex
 * (held for a hash lookup and a copy, well under a microsecond). Token versions only
 * grow, so a put never replaces a fresh entry by one with a lower version (a store
 * read that raced with a logout cannot bring the old version back). O(1) per
 * operation; at most max_entries users (the table is emptied when full, which only
 * costs store lookups). */
#ifndef TMS_CORE_USER_CACHE_H
#define TMS_CORE_USER_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "core/user_store.h"

typedef struct tms_user_cache tms_user_cache_t;

/** A cache keeping entries ttl_ms; ttl_ms 0 makes every lookup miss. Never NULL. */
tms_user_cache_t *tms_user_cache_new(uint64_t ttl_ms, size_t max_entries);

/** Free the cache. Sets *c NULL. */
void tms_user_cache_free(tms_user_cache_t **c);

/** Copy the cached user with this id into *out (no password hash) if present and
 * fresh at now_ms; returns 1 on a hit, else 0. */
int tms_user_cache_get(tms_user_cache_t *c, const char *id, uint64_t now_ms, tms_user_t *out);

/** Insert or replace the entry for u->id (the hash is not kept), unless a fresh entry
 * holds a higher token version. */
void tms_user_cache_put(tms_user_cache_t *c, const tms_user_t *u, uint64_t now_ms);

/** Drop the entry for id, if any. */
void tms_user_cache_remove(tms_user_cache_t *c, const char *id);

#endif
