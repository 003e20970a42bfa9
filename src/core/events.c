#include "core/events.h"

#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/status.h"

void tms_event_id_new(char out[37])
{
    unsigned char b[16];
    randombytes_buf(b, sizeof(b));
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
             b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
}

void tms_event_id_derive(const char *topic, const char *payload, size_t len, char out[37])
{
    unsigned char b[16];
    crypto_generichash_state st;
    json_t *root = json_loadb(payload, len, JSON_REJECT_DUPLICATES, NULL);
    /* The same JSON from another producer (other key order or spacing) is the same
     * event: hash its canonical form; bytes that are no JSON as they are. */
    char *canon = root ? json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY) : NULL;
    json_decref(root);
    crypto_generichash_init(&st, NULL, 0, sizeof(b));
    crypto_generichash_update(&st, (const unsigned char *)topic, strlen(topic) + 1);
    if (canon)
        crypto_generichash_update(&st, (const unsigned char *)canon, strlen(canon));
    else
        crypto_generichash_update(&st, (const unsigned char *)payload, len);
    crypto_generichash_final(&st, b, sizeof(b));
    free(canon);
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x80); /* version 8: derived, never a random v4 */
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* RFC 9562 variant */
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
             b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
}

static char *dump(json_t *j)
{
    char *text;
    if (!j)
        tms_oom(__FILE__, __LINE__);
    text = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (!text)
        tms_oom(__FILE__, __LINE__);
    return text;
}

char *tms_event_notification_json(const char *type, const char *user_id, int64_t task_id,
                                  const char *event_id, const char *title, int64_t occurred_ms,
                                  const char *assigned_by)
{
    char id[24], ts[32];
    json_t *j;
    snprintf(id, sizeof(id), "%lld", (long long)task_id);
    j = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "type", type, "user_id", user_id, "task_id", id,
                  "event_id", event_id, "title", title, "occurred_at",
                  tms_format_time(occurred_ms, ts, sizeof(ts)));
    if (j && assigned_by && *assigned_by &&
        json_object_set_new(j, "assigned_by", json_string(assigned_by)) != 0)
        tms_oom(__FILE__, __LINE__);
    return dump(j);
}

char *tms_event_user_json(const tms_user_t *u, const char *event_id)
{
    char ts[32];
    return dump(json_pack("{s:{s:s, s:s, s:s, s:I, s:s}, s:s}", "user", "id", u->id, "email",
                          u->email, "role", u->role, "tokenVersion", (json_int_t)u->token_version,
                          "createdAt", tms_format_time(u->created_at_ms, ts, sizeof(ts)),
                          "event_id", event_id));
}

/* Parses "YYYY-MM-DDTHH:MM:SS.mmmZ" back to ms since the epoch. */
static int parse_time(const char *s, int64_t *out)
{
    struct tm tm;
    int ms = 0;
    memset(&tm, 0, sizeof(tm));
    if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d.%3dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
               &tm.tm_min, &tm.tm_sec, &ms) != 7)
        return -TMS_EINVAL;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    *out = (int64_t)timegm(&tm) * 1000 + ms;
    return 0;
}

static int copy_str(json_t *obj, const char *key, char *dst, size_t size)
{
    json_t *v = json_object_get(obj, key);
    if (!json_is_string(v) || json_string_length(v) >= size)
        return -TMS_EINVAL;
    memcpy(dst, json_string_value(v), json_string_length(v) + 1);
    return 0;
}

/* event_id, or "" when the event has none (the original system's events). */
static int copy_event_id(json_t *obj, char event_id[37])
{
    json_t *v = json_object_get(obj, "event_id");
    event_id[0] = '\0';
    if (!v || json_is_null(v))
        return 0;
    return copy_str(obj, "event_id", event_id, 37) || !event_id[0] ? -TMS_EINVAL : 0;
}

int tms_event_user_parse(const char *json, tms_user_t *user, char event_id[37])
{
    json_t *root = json_loads(json, JSON_REJECT_DUPLICATES, NULL), *u, *tv, *ca;
    int rc = -TMS_EINVAL;
    memset(user, 0, sizeof(*user));
    if (!root)
        return rc;
    u = json_object_get(root, "user");
    tv = json_object_get(u, "tokenVersion");
    ca = json_object_get(u, "createdAt");
    if (!json_is_object(u) || !json_is_integer(tv) || !json_is_string(ca) ||
        copy_str(u, "id", user->id, sizeof(user->id)) ||
        copy_str(u, "email", user->email, sizeof(user->email)) ||
        copy_str(u, "role", user->role, sizeof(user->role)) || copy_event_id(root, event_id) ||
        parse_time(json_string_value(ca), &user->created_at_ms))
        goto out;
    user->token_version = json_integer_value(tv);
    rc = 0;
out:
    json_decref(root);
    return rc;
}

int tms_event_notification_parse(const char *json, char type[16], char user_id[25],
                                 int64_t *task_id, char event_id[37], char **title,
                                 char assigned_by[25])
{
    json_t *root = json_loads(json, JSON_REJECT_DUPLICATES, NULL), *t, *by;
    char id[24], *end;
    int rc = -TMS_EINVAL;
    if (!root)
        return rc;
    t = json_object_get(root, "title");
    if (copy_str(root, "type", type, 16) || copy_str(root, "user_id", user_id, 25) ||
        copy_str(root, "task_id", id, sizeof(id)) || copy_event_id(root, event_id) ||
        (t && !json_is_null(t) && !json_is_string(t)))
        goto out;
    *task_id = strtoll(id, &end, 10);
    if (*end != '\0' || *task_id <= 0)
        goto out;
    by = json_object_get(root, "assigned_by");
    if (assigned_by) {
        assigned_by[0] = '\0';
        if (by && !json_is_null(by) && copy_str(root, "assigned_by", assigned_by, 25))
            goto out;
    }
    *title = json_is_string(t) ? tms_strdup(json_string_value(t)) : NULL;
    rc = 0;
out:
    json_decref(root);
    return rc;
}
