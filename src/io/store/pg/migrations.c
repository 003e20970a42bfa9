/* Versioned schema migrations for PostgreSQL and the blocking start-up checks. Append
 * only: a released migration never changes, a new one is added at the end. They run
 * on a blocking connection, from `tms migrate` or before the loop serves anything. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/task_store.h"
#include "io/store/pg/internal.h"

/* Any constant; shared by every TMS instance so that only one migrates at a time. */
#define MIGRATION_LOCK_KEY 0x746d735f6d6967LL

/* The transactional writes are functions so that each operation is one statement:
 * one round trip, and pipelining stays simple. The notification payload has the
 * shape of tms_event_notification_json (core/events.c). */
static const char *const migrations[] = {
    /* 1: tasks, outbox, inbox, idempotency, and the write functions */
    "CREATE TABLE tasks ("
    " id BIGSERIAL PRIMARY KEY," /* never reused, even after a delete */
    " title TEXT NOT NULL,"
    " description TEXT NOT NULL,"
    " status TEXT NOT NULL CHECK (status IN ('open', 'in progress', 'closed')),"
    " assigned_to TEXT,"
    " created_by TEXT NOT NULL,"
    " created_at_ms BIGINT NOT NULL,"
    " updated_at_ms BIGINT NOT NULL,"
    " version BIGINT NOT NULL);"
    "CREATE INDEX tasks_assigned ON tasks (assigned_to, id);"
    "CREATE INDEX tasks_status ON tasks (status, id);"
    "CREATE INDEX tasks_assigned_status ON tasks (assigned_to, status, id);"
    "CREATE TABLE outbox ("
    " seq BIGSERIAL PRIMARY KEY,"
    " event_id TEXT NOT NULL UNIQUE,"
    " topic TEXT NOT NULL,"
    " key TEXT NOT NULL,"
    " payload TEXT NOT NULL,"
    " created_at_ms BIGINT NOT NULL,"
    " sent_at_ms BIGINT);"
    "CREATE INDEX outbox_pending ON outbox (seq) WHERE sent_at_ms IS NULL;"
    "CREATE TABLE inbox ("
    " consumer TEXT NOT NULL,"
    " event_id TEXT NOT NULL,"
    " handled_at_ms BIGINT NOT NULL,"
    " PRIMARY KEY (consumer, event_id));"
    "CREATE TABLE idempotency ("
    " user_id TEXT NOT NULL,"
    " key TEXT NOT NULL,"
    " request_hash TEXT NOT NULL,"
    " task_id BIGINT NOT NULL,"
    " created_at_ms BIGINT NOT NULL,"
    " PRIMARY KEY (user_id, key));"
    "CREATE FUNCTION tms_notify(p_type text, p_user text, p_task bigint, p_event text,"
    "  p_title text, p_ms bigint) RETURNS void LANGUAGE sql AS $$"
    " INSERT INTO outbox (event_id, topic, key, payload, created_at_ms)"
    " VALUES (p_event, 'notifications', p_task::text,"
    "  json_build_object('type', p_type, 'user_id', p_user, 'task_id', p_task::text,"
    "   'event_id', p_event, 'title', p_title, 'occurred_at',"
    "   to_char(timestamp 'epoch' + p_ms * interval '1 millisecond',"
    "           'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'))::text, p_ms) $$;"
    "CREATE FUNCTION tms_task_create(p_title text, p_description text, p_status text,"
    "  p_assigned text, p_created_by text, p_now bigint, p_idem_key text, p_idem_hash text,"
    "  p_ttl bigint, p_notify text, p_event text,"
    "  OUT o_st text, OUT o_id bigint, OUT o_title text, OUT o_description text,"
    "  OUT o_status text, OUT o_assigned_to text, OUT o_created_by text,"
    "  OUT o_created_at_ms bigint, OUT o_updated_at_ms bigint, OUT o_version bigint)"
    " LANGUAGE plpgsql AS $$"
    " DECLARE r record;"
    " BEGIN"
    "  IF p_idem_key <> '' THEN"
    /* concurrent requests with one key wait for each other, as on SQLite's one thread */
    "   PERFORM pg_advisory_xact_lock(hashtextextended(p_created_by || '/' || p_idem_key, 0));"
    "   SELECT i.request_hash, i.task_id, i.created_at_ms INTO r FROM idempotency i"
    "    WHERE i.user_id = p_created_by AND i.key = p_idem_key;"
    "   IF FOUND AND p_now - r.created_at_ms <= p_ttl THEN"
    "    IF r.request_hash <> p_idem_hash THEN o_st := 'conflict'; RETURN; END IF;"
    "    SELECT t.* INTO o_id, o_title, o_description, o_status, o_assigned_to, o_created_by,"
    "     o_created_at_ms, o_updated_at_ms, o_version FROM tasks t WHERE t.id = r.task_id;"
    "    o_st := CASE WHEN FOUND THEN 'replayed' ELSE 'gone' END;"
    "    RETURN;"
    "   END IF;"
    "  END IF;"
    "  INSERT INTO tasks AS t (title, description, status, assigned_to, created_by,"
    "   created_at_ms, updated_at_ms, version)"
    "   VALUES (p_title, p_description, p_status, NULLIF(p_assigned, ''), p_created_by,"
    "   p_now, p_now, 1)"
    "   RETURNING t.* INTO o_id, o_title, o_description, o_status, o_assigned_to,"
    "    o_created_by, o_created_at_ms, o_updated_at_ms, o_version;"
    "  IF p_idem_key <> '' THEN"
    "   INSERT INTO idempotency AS i (user_id, key, request_hash, task_id, created_at_ms)"
    "    VALUES (p_created_by, p_idem_key, p_idem_hash, o_id, p_now)"
    "    ON CONFLICT (user_id, key) DO UPDATE SET request_hash = EXCLUDED.request_hash,"
    "     task_id = EXCLUDED.task_id, created_at_ms = EXCLUDED.created_at_ms;"
    "  END IF;"
    "  IF p_notify <> '' THEN"
    "   PERFORM tms_notify(p_notify, coalesce(o_assigned_to, ''), o_id, p_event, o_title,"
    "    o_updated_at_ms);"
    "  END IF;"
    "  o_st := 'ok';"
    " END $$;"
    "CREATE FUNCTION tms_task_update(p_id bigint, p_expected bigint, p_set_title boolean,"
    "  p_title text, p_set_description boolean, p_description text, p_set_status boolean,"
    "  p_status text, p_set_assigned boolean, p_assigned text, p_now bigint, p_notify text,"
    "  p_event text,"
    "  OUT o_st text, OUT o_id bigint, OUT o_title text, OUT o_description text,"
    "  OUT o_status text, OUT o_assigned_to text, OUT o_created_by text,"
    "  OUT o_created_at_ms bigint, OUT o_updated_at_ms bigint, OUT o_version bigint)"
    " LANGUAGE plpgsql AS $$"
    " DECLARE v bigint;"
    " BEGIN"
    "  SELECT t.version INTO v FROM tasks t WHERE t.id = p_id FOR UPDATE;"
    "  IF NOT FOUND THEN o_st := 'not_found'; RETURN; END IF;"
    "  IF p_expected <> 0 AND p_expected <> v THEN"
    "   o_st := 'conflict'; o_version := v; RETURN;"
    "  END IF;"
    "  UPDATE tasks AS t SET"
    "   title = CASE WHEN p_set_title THEN p_title ELSE t.title END,"
    "   description = CASE WHEN p_set_description THEN p_description ELSE t.description END,"
    "   status = CASE WHEN p_set_status THEN p_status ELSE t.status END,"
    "   assigned_to = CASE WHEN p_set_assigned THEN NULLIF(p_assigned, '')"
    "    ELSE t.assigned_to END,"
    "   version = t.version + 1, updated_at_ms = p_now"
    "   WHERE t.id = p_id"
    "   RETURNING t.* INTO o_id, o_title, o_description, o_status, o_assigned_to,"
    "    o_created_by, o_created_at_ms, o_updated_at_ms, o_version;"
    "  IF p_notify <> '' THEN"
    "   PERFORM tms_notify(p_notify, coalesce(o_assigned_to, ''), o_id, p_event, o_title,"
    "    o_updated_at_ms);"
    "  END IF;"
    "  o_st := 'ok';"
    " END $$;"
    "CREATE FUNCTION tms_task_delete(p_id bigint, p_expected bigint,"
    "  OUT o_st text, OUT o_id bigint, OUT o_title text, OUT o_description text,"
    "  OUT o_status text, OUT o_assigned_to text, OUT o_created_by text,"
    "  OUT o_created_at_ms bigint, OUT o_updated_at_ms bigint, OUT o_version bigint)"
    " LANGUAGE plpgsql AS $$"
    " BEGIN"
    "  SELECT t.* INTO o_id, o_title, o_description, o_status, o_assigned_to, o_created_by,"
    "   o_created_at_ms, o_updated_at_ms, o_version FROM tasks t WHERE t.id = p_id FOR UPDATE;"
    "  IF NOT FOUND THEN o_st := 'not_found'; RETURN; END IF;"
    "  IF p_expected <> 0 AND p_expected <> o_version THEN o_st := 'conflict'; RETURN; END IF;"
    "  DELETE FROM tasks t WHERE t.id = p_id;"
    "  o_st := 'ok';"
    " END $$;",
    /* 2 (issue 17): notifications carry assigned_by, the user who created or reassigned
     * the task (the notifier limits emails per assigner and recipient). A create's
     * assigner is the task's creator, so tms_task_create stays as it was; an update
     * passes its caller. */
    "DROP FUNCTION tms_notify(text, text, bigint, text, text, bigint);"
    "CREATE FUNCTION tms_notify(p_type text, p_user text, p_task bigint, p_event text,"
    "  p_title text, p_ms bigint, p_by text DEFAULT NULL) RETURNS void LANGUAGE sql AS $$"
    " INSERT INTO outbox (event_id, topic, key, payload, created_at_ms)"
    " VALUES (p_event, 'notifications', p_task::text,"
    "  json_build_object('type', p_type, 'user_id', p_user, 'task_id', p_task::text,"
    "   'event_id', p_event, 'title', p_title, 'occurred_at',"
    "   to_char(timestamp 'epoch' + p_ms * interval '1 millisecond',"
    "           'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),"
    "   'assigned_by', coalesce(p_by, (SELECT t.created_by FROM tasks t WHERE t.id = p_task)))"
    "  ::text, p_ms) $$;"
    "DROP FUNCTION tms_task_update(bigint, bigint, boolean, text, boolean, text, boolean, text,"
    "  boolean, text, bigint, text, text);"
    "CREATE FUNCTION tms_task_update(p_id bigint, p_expected bigint, p_set_title boolean,"
    "  p_title text, p_set_description boolean, p_description text, p_set_status boolean,"
    "  p_status text, p_set_assigned boolean, p_assigned text, p_now bigint, p_notify text,"
    "  p_event text, p_by text,"
    "  OUT o_st text, OUT o_id bigint, OUT o_title text, OUT o_description text,"
    "  OUT o_status text, OUT o_assigned_to text, OUT o_created_by text,"
    "  OUT o_created_at_ms bigint, OUT o_updated_at_ms bigint, OUT o_version bigint)"
    " LANGUAGE plpgsql AS $$"
    " DECLARE v bigint;"
    " BEGIN"
    "  SELECT t.version INTO v FROM tasks t WHERE t.id = p_id FOR UPDATE;"
    "  IF NOT FOUND THEN o_st := 'not_found'; RETURN; END IF;"
    "  IF p_expected <> 0 AND p_expected <> v THEN"
    "   o_st := 'conflict'; o_version := v; RETURN;"
    "  END IF;"
    "  UPDATE tasks AS t SET"
    "   title = CASE WHEN p_set_title THEN p_title ELSE t.title END,"
    "   description = CASE WHEN p_set_description THEN p_description ELSE t.description END,"
    "   status = CASE WHEN p_set_status THEN p_status ELSE t.status END,"
    "   assigned_to = CASE WHEN p_set_assigned THEN NULLIF(p_assigned, '')"
    "    ELSE t.assigned_to END,"
    "   version = t.version + 1, updated_at_ms = p_now"
    "   WHERE t.id = p_id"
    "   RETURNING t.* INTO o_id, o_title, o_description, o_status, o_assigned_to,"
    "    o_created_by, o_created_at_ms, o_updated_at_ms, o_version;"
    "  IF p_notify <> '' THEN"
    "   PERFORM tms_notify(p_notify, coalesce(o_assigned_to, ''), o_id, p_event, o_title,"
    "    o_updated_at_ms, NULLIF(p_by, ''));"
    "  END IF;"
    "  o_st := 'ok';"
    " END $$;",
    /* 3 (issue 23): the push log, one row per change of a task written by a trigger
     * in the change's transaction (the write functions above stay as they are). seq
     * comes from a sequence: two transactions may commit in the other order than
     * their seq, which the push hubs wait out (core/push.h). */
    "CREATE TABLE task_events ("
    " seq BIGSERIAL PRIMARY KEY,"
    " type TEXT NOT NULL,"
    " at_ms BIGINT NOT NULL,"
    " task_id BIGINT NOT NULL,"
    " title TEXT NOT NULL,"
    " description TEXT NOT NULL,"
    " status TEXT NOT NULL,"
    " assigned_to TEXT,"
    " created_by TEXT NOT NULL,"
    " created_at_ms BIGINT NOT NULL,"
    " updated_at_ms BIGINT NOT NULL,"
    " version BIGINT NOT NULL,"
    " prev_assigned_to TEXT,"
    " prev_status TEXT);"
    "CREATE FUNCTION tms_task_event() RETURNS trigger LANGUAGE plpgsql AS $$"
    " BEGIN"
    "  IF TG_OP = 'DELETE' THEN"
    "   INSERT INTO task_events (type, at_ms, task_id, title, description, status,"
    "    assigned_to, created_by, created_at_ms, updated_at_ms, version, prev_assigned_to,"
    "    prev_status)"
    "   VALUES ('deleted', (extract(epoch FROM clock_timestamp()) * 1000)::bigint, OLD.id,"
    "    OLD.title, OLD.description, OLD.status, OLD.assigned_to, OLD.created_by,"
    "    OLD.created_at_ms, OLD.updated_at_ms, OLD.version, OLD.assigned_to, OLD.status);"
    "   RETURN OLD;"
    "  END IF;"
    "  IF TG_OP = 'INSERT' THEN"
    "   INSERT INTO task_events (type, at_ms, task_id, title, description, status,"
    "    assigned_to, created_by, created_at_ms, updated_at_ms, version)"
    "   VALUES ('created', NEW.updated_at_ms, NEW.id, NEW.title, NEW.description, NEW.status,"
    "    NEW.assigned_to, NEW.created_by, NEW.created_at_ms, NEW.updated_at_ms, NEW.version);"
    "   RETURN NEW;"
    "  END IF;"
    "  INSERT INTO task_events (type, at_ms, task_id, title, description, status,"
    "   assigned_to, created_by, created_at_ms, updated_at_ms, version, prev_assigned_to,"
    "   prev_status)"
    "  VALUES (CASE WHEN NEW.assigned_to IS DISTINCT FROM OLD.assigned_to THEN 'assigned'"
    "   ELSE 'updated' END, NEW.updated_at_ms, NEW.id, NEW.title, NEW.description,"
    "   NEW.status, NEW.assigned_to, NEW.created_by, NEW.created_at_ms, NEW.updated_at_ms,"
    "   NEW.version, OLD.assigned_to, OLD.status);"
    "  RETURN NEW;"
    " END $$;"
    "CREATE TRIGGER task_events AFTER INSERT OR UPDATE OR DELETE ON tasks"
    " FOR EACH ROW EXECUTE FUNCTION tms_task_event();",
    /* 4 (issue 20): the writes insert their outbox row themselves instead of calling
     * tms_notify, a SQL function that PostgreSQL parses and plans again on every call
     * (plpgsql keeps the plans of its own statements for the session). A create is now
     * a statement of its own (io/store/pg/tasks.c); tms_task_create stays for instances
     * of an older version during an upgrade. */
    "CREATE OR REPLACE FUNCTION tms_task_create(p_title text, p_description text,"
    "  p_status text, p_assigned text, p_created_by text, p_now bigint, p_idem_key text,"
    "  p_idem_hash text, p_ttl bigint, p_notify text, p_event text,"
    "  OUT o_st text, OUT o_id bigint, OUT o_title text, OUT o_description text,"
    "  OUT o_status text, OUT o_assigned_to text, OUT o_created_by text,"
    "  OUT o_created_at_ms bigint, OUT o_updated_at_ms bigint, OUT o_version bigint)"
    " LANGUAGE plpgsql AS $$"
    " DECLARE r record;"
    " BEGIN"
    "  IF p_idem_key <> '' THEN"
    "   PERFORM pg_advisory_xact_lock(hashtextextended(p_created_by || '/' || p_idem_key, 0));"
    "   SELECT i.request_hash, i.task_id, i.created_at_ms INTO r FROM idempotency i"
    "    WHERE i.user_id = p_created_by AND i.key = p_idem_key;"
    "   IF FOUND AND p_now - r.created_at_ms <= p_ttl THEN"
    "    IF r.request_hash <> p_idem_hash THEN o_st := 'conflict'; RETURN; END IF;"
    "    SELECT t.* INTO o_id, o_title, o_description, o_status, o_assigned_to, o_created_by,"
    "     o_created_at_ms, o_updated_at_ms, o_version FROM tasks t WHERE t.id = r.task_id;"
    "    o_st := CASE WHEN FOUND THEN 'replayed' ELSE 'gone' END;"
    "    RETURN;"
    "   END IF;"
    "  END IF;"
    "  INSERT INTO tasks AS t (title, description, status, assigned_to, created_by,"
    "   created_at_ms, updated_at_ms, version)"
    "   VALUES (p_title, p_description, p_status, NULLIF(p_assigned, ''), p_created_by,"
    "   p_now, p_now, 1)"
    "   RETURNING t.* INTO o_id, o_title, o_description, o_status, o_assigned_to,"
    "    o_created_by, o_created_at_ms, o_updated_at_ms, o_version;"
    "  IF p_idem_key <> '' THEN"
    "   INSERT INTO idempotency AS i (user_id, key, request_hash, task_id, created_at_ms)"
    "    VALUES (p_created_by, p_idem_key, p_idem_hash, o_id, p_now)"
    "    ON CONFLICT (user_id, key) DO UPDATE SET request_hash = EXCLUDED.request_hash,"
    "     task_id = EXCLUDED.task_id, created_at_ms = EXCLUDED.created_at_ms;"
    "  END IF;"
    "  IF p_notify <> '' THEN"
    "   INSERT INTO outbox (event_id, topic, key, payload, created_at_ms)"
    "    VALUES (p_event, 'notifications', o_id::text,"
    "     json_build_object('type', p_notify, 'user_id', coalesce(o_assigned_to, ''),"
    "      'task_id', o_id::text, 'event_id', p_event, 'title', o_title, 'occurred_at',"
    "      to_char(timestamp 'epoch' + o_updated_at_ms * interval '1 millisecond',"
    "              'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),"
    "      'assigned_by', o_created_by)::text, o_updated_at_ms);"
    "  END IF;"
    "  o_st := 'ok';"
    " END $$;"
    "CREATE OR REPLACE FUNCTION tms_task_update(p_id bigint, p_expected bigint,"
    "  p_set_title boolean, p_title text, p_set_description boolean, p_description text,"
    "  p_set_status boolean, p_status text, p_set_assigned boolean, p_assigned text,"
    "  p_now bigint, p_notify text, p_event text, p_by text,"
    "  OUT o_st text, OUT o_id bigint, OUT o_title text, OUT o_description text,"
    "  OUT o_status text, OUT o_assigned_to text, OUT o_created_by text,"
    "  OUT o_created_at_ms bigint, OUT o_updated_at_ms bigint, OUT o_version bigint)"
    " LANGUAGE plpgsql AS $$"
    " DECLARE v bigint;"
    " BEGIN"
    "  SELECT t.version INTO v FROM tasks t WHERE t.id = p_id FOR UPDATE;"
    "  IF NOT FOUND THEN o_st := 'not_found'; RETURN; END IF;"
    "  IF p_expected <> 0 AND p_expected <> v THEN"
    "   o_st := 'conflict'; o_version := v; RETURN;"
    "  END IF;"
    "  UPDATE tasks AS t SET"
    "   title = CASE WHEN p_set_title THEN p_title ELSE t.title END,"
    "   description = CASE WHEN p_set_description THEN p_description ELSE t.description END,"
    "   status = CASE WHEN p_set_status THEN p_status ELSE t.status END,"
    "   assigned_to = CASE WHEN p_set_assigned THEN NULLIF(p_assigned, '')"
    "    ELSE t.assigned_to END,"
    "   version = t.version + 1, updated_at_ms = p_now"
    "   WHERE t.id = p_id"
    "   RETURNING t.* INTO o_id, o_title, o_description, o_status, o_assigned_to,"
    "    o_created_by, o_created_at_ms, o_updated_at_ms, o_version;"
    "  IF p_notify <> '' THEN"
    "   INSERT INTO outbox (event_id, topic, key, payload, created_at_ms)"
    "    VALUES (p_event, 'notifications', o_id::text,"
    "     json_build_object('type', p_notify, 'user_id', coalesce(o_assigned_to, ''),"
    "      'task_id', o_id::text, 'event_id', p_event, 'title', o_title, 'occurred_at',"
    "      to_char(timestamp 'epoch' + o_updated_at_ms * interval '1 millisecond',"
    "              'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),"
    "      'assigned_by', coalesce(NULLIF(p_by, ''), o_created_by))::text, o_updated_at_ms);"
    "  END IF;"
    "  o_st := 'ok';"
    " END $$;",
};

#define KNOWN ((int)(sizeof(migrations) / sizeof(migrations[0])))

static void quiet(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

PGconn *tms__pg_connect_sync(const char *url, char *err, size_t err_len)
{
    PGconn *c = PQconnectdb(url);
    if (!c || PQstatus(c) != CONNECTION_OK) {
        const char *m = c ? PQerrorMessage(c) : "out of memory";
        snprintf(err, err_len, "postgres: cannot connect: %.*s", (int)strcspn(m, "\n"), m);
        PQfinish(c);
        return NULL;
    }
    PQsetNoticeProcessor(c, quiet, NULL);
    return c;
}

/* Runs sql; 0 when it returned the expected status, else -1 with err. */
static int run(PGconn *c, const char *sql, ExecStatusType want, char *out, size_t out_len,
               char *err, size_t err_len, const char *what)
{
    PGresult *r = PQexec(c, sql);
    int rc = 0;
    if (PQresultStatus(r) != want) {
        const char *m = PQerrorMessage(c);
        snprintf(err, err_len, "postgres: %s: %.*s", what, (int)strcspn(m, "\n"), m);
        rc = -1;
    } else if (out) {
        snprintf(out, out_len, "%s", PQntuples(r) > 0 ? PQgetvalue(r, 0, 0) : "");
    }
    PQclear(r);
    return rc;
}

int tms__pg_check_server(PGconn *c, bool accept_async, char *err, size_t err_len)
{
    char v[32];
    if (run(c, "SELECT current_setting('synchronous_commit')", PGRES_TUPLES_OK, v, sizeof(v), err,
            err_len, "cannot read synchronous_commit") != 0)
        return -TMS_EIO;
    if (strcmp(v, "off") == 0) {
        if (!accept_async) {
            snprintf(err, err_len,
                     "postgres: server has synchronous_commit=off, so acknowledged writes could"
                     " be lost; turn it on (or set tasks.synchronous_commit=accept-off)");
            return -TMS_EIO;
        }
        tms_log_warn("pg_async_commit", "%s", "synchronous_commit=off accepted");
    }
    return 0;
}

static int apply(PGconn *c, char *err, size_t err_len)
{
    char v[32], sql[160];
    if (run(c,
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
            PGRES_COMMAND_OK, NULL, 0, err, err_len, "cannot create schema_migrations") != 0)
        return -1;
    for (;;) {
        int version;
        if (run(c, "BEGIN", PGRES_COMMAND_OK, NULL, 0, err, err_len, "begin") != 0 ||
            run(c, "SELECT coalesce(max(version), 0) FROM schema_migrations", PGRES_TUPLES_OK, v,
                sizeof(v), err, err_len, "cannot read schema version") != 0)
            goto fail;
        version = atoi(v);
        if (version > KNOWN) {
            snprintf(err, err_len,
                     "postgres: database schema version %d is newer than this binary knows (%d);"
                     " upgrade tms",
                     version, KNOWN);
            goto fail;
        }
        if (version == KNOWN)
            return run(c, "COMMIT", PGRES_COMMAND_OK, NULL, 0, err, err_len, "commit");
        snprintf(sql, sizeof(sql), "INSERT INTO schema_migrations (version) VALUES (%d)",
                 version + 1);
        if (run(c, migrations[version], PGRES_COMMAND_OK, NULL, 0, err, err_len,
                "migration failed") != 0 ||
            run(c, sql, PGRES_COMMAND_OK, NULL, 0, err, err_len, "migration failed") != 0 ||
            run(c, "COMMIT", PGRES_COMMAND_OK, NULL, 0, err, err_len, "commit") != 0)
            goto fail;
        tms_log_info("pg_migrated", "version=%d", version + 1);
    }
fail:
    PQclear(PQexec(c, "ROLLBACK"));
    return -1;
}

/* The relay deletes a sent event's row (outbox.c); the rows that earlier versions marked
 * sent and kept, and those an instance of such a version still marks during an upgrade,
 * go when a process starts (worker 0, whatever tasks.migrate says) and on `tms migrate`:
 * normally none. In batches that each commit, so a start killed midway keeps what it
 * deleted and no transaction holds a large table. Not a migration: a schema version
 * would stop a binary of an earlier version from starting on this database (a
 * rollback). A failure is only logged: nothing reads a sent row, so one left over does
 * no harm. */
enum { PURGE_BATCH = 10000 };
void tms__pg_purge_sent(PGconn *c)
{
    char limit[16];
    const char *batch = limit;
    long long total = 0, n;
    snprintf(limit, sizeof(limit), "%d", PURGE_BATCH);
    do {
        PGresult *r = PQexecParams(c,
                                   "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox"
                                   " WHERE sent_at_ms IS NOT NULL ORDER BY seq LIMIT $1::int)",
                                   1, NULL, &batch, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            const char *m = PQerrorMessage(c);
            tms_log_warn("pg_outbox_purge_failed", "deleted=%lld error=\"%.*s\"", total,
                         (int)strcspn(m, "\n"), m);
            PQclear(r);
            return;
        }
        n = atoll(PQcmdTuples(r));
        total += n;
        PQclear(r);
    } while (n >= PURGE_BATCH);
    if (total > 0)
        tms_log_info("pg_outbox_purged", "sent=%lld", total);
}

int tms__pg_apply_migrations(PGconn *c, char *err, size_t err_len)
{
    char sql[96];
    int rc;
    /* Two instances starting at once: the second waits here, then finds nothing to do. */
    snprintf(sql, sizeof(sql), "SELECT pg_advisory_lock(%lld)", MIGRATION_LOCK_KEY);
    if (run(c, sql, PGRES_TUPLES_OK, NULL, 0, err, err_len, "cannot take migration lock") != 0)
        return -TMS_EIO;
    rc = apply(c, err, err_len);
    snprintf(sql, sizeof(sql), "SELECT pg_advisory_unlock(%lld)", MIGRATION_LOCK_KEY);
    PQclear(PQexec(c, sql));
    return rc == 0 ? 0 : -TMS_EIO;
}

int tms_pg_migrate_sync(const char *url, char *err, size_t err_len)
{
    PGconn *c = tms__pg_connect_sync(url, err, err_len);
    int rc;
    if (!c)
        return -TMS_EIO;
    rc = tms__pg_apply_migrations(c, err, err_len);
    if (rc == 0)
        tms__pg_purge_sent(c);
    PQfinish(c);
    return rc;
}
