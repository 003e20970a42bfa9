/* The JSON shapes of API.md's events, built in one place for every store and bus,
 * and event ids. */
#ifndef TMS_CORE_EVENTS_H
#define TMS_CORE_EVENTS_H

#include <stdint.h>

#include "core/user_store.h"

#define TMS_TOPIC_NOTIFICATIONS "notifications"
#define TMS_TOPIC_USER_DELETED "user_deleted"
#define TMS_TOPIC_COMPENSATE "compensate_user_deletion"

/** A new random (v4) UUID as 36 characters plus NUL. Thread-safe. */
void tms_event_id_new(char out[37]);

/** The id of an event that came without event_id (the original system's producers):
 * a UUID-shaped (version 8) BLAKE2b-128 digest of topic and the payload's canonical
 * JSON (keys sorted, compact; raw bytes when it is no JSON). The same payload
 * published twice on a topic is one event, so consumers drop the second as a
 * duplicate: an original event names what it is about (task_created its task,
 * user_deleted its user, ids never reused), so equal payloads are the same event.
 * A topic/partition/offset id would make a second publish a second event. */
void tms_event_id_derive(const char *topic, const char *payload, size_t len, char out[37]);

/** {type, user_id, task_id, event_id, title, occurred_at, assigned_by}: task_id as
 * decimal string; assigned_by (an addition to the original's shape: the user who
 * created or reassigned the task) left out when NULL or "". Returns heap JSON text;
 * never NULL. */
char *tms_event_notification_json(const char *type, const char *user_id, int64_t task_id,
                                  const char *event_id, const char *title, int64_t occurred_ms,
                                  const char *assigned_by);

/** {user: {id, email, role, tokenVersion, createdAt}, event_id}: for user_deleted and
 * compensate_user_deletion. Never includes the password hash. Heap; never NULL. */
char *tms_event_user_json(const tms_user_t *user, const char *event_id);

/** Parse a user event back (id, email, role, token_version, created_at_ms filled;
 * password_hash left empty; fields beyond those, such as the original's password,
 * ignored). event_id gets "" when the event has none (tms_event_id_derive). Returns 0
 * or -TMS_EINVAL. */
int tms_event_user_parse(const char *json, tms_user_t *user, char event_id[37]);

/** Parse a notification event. Returns 0 or -TMS_EINVAL; *title is heap, or NULL when
 * the event has none (the original's events: {type, user_id, task_id}); event_id gets
 * "" when it has none (tms_event_id_derive). assigned_by (may be NULL) gets "" when the
 * event has none (the original's events, TMS before issue 17). */
int tms_event_notification_parse(const char *json, char type[16], char user_id[25],
                                 int64_t *task_id, char event_id[37], char **title,
                                 char assigned_by[25]);

#endif
