/* Versioned schema migrations for the embedded store. Append only: a released
 * migration never changes, a new one is added at the end. */
#include <stdio.h>

#include "core/log.h"
#include "io/store/sqlite/internal.h"

/* migrations[i] brings the schema from version i to version i + 1. */
static const char *const migrations[] = {
    /* 1: users */
    "CREATE TABLE users ("
    " id TEXT PRIMARY KEY,"
    " email TEXT NOT NULL UNIQUE,"
    " password_hash TEXT NOT NULL,"
    " role TEXT NOT NULL CHECK (role IN ('user', 'admin')),"
    " token_version INTEGER NOT NULL DEFAULT 0,"
    " created_at_ms INTEGER NOT NULL)",
    /* 2: tasks, the outbox and inbox of events, idempotency records and the
     * tombstones that let the delete-user saga restore a user as it was */
    "CREATE TABLE tasks ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT," /* never reused, even after a delete */
    " title TEXT NOT NULL,"
    " description TEXT NOT NULL,"
    " status TEXT NOT NULL CHECK (status IN ('open', 'in progress', 'closed')),"
    " assigned_to TEXT,"
    " created_by TEXT NOT NULL,"
    " created_at_ms INTEGER NOT NULL,"
    " updated_at_ms INTEGER NOT NULL,"
    " version INTEGER NOT NULL);"
    "CREATE INDEX tasks_assigned ON tasks (assigned_to, id);"
    "CREATE INDEX tasks_status ON tasks (status, id);"
    "CREATE INDEX tasks_assigned_status ON tasks (assigned_to, status, id);"
    "CREATE TABLE outbox ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " event_id TEXT NOT NULL UNIQUE,"
    " topic TEXT NOT NULL,"
    " key TEXT NOT NULL,"
    " payload TEXT NOT NULL,"
    " created_at_ms INTEGER NOT NULL,"
    " sent_at_ms INTEGER);"
    "CREATE INDEX outbox_pending ON outbox (seq) WHERE sent_at_ms IS NULL;"
    "CREATE TABLE inbox ("
    " consumer TEXT NOT NULL,"
    " event_id TEXT NOT NULL,"
    " handled_at_ms INTEGER NOT NULL,"
    " PRIMARY KEY (consumer, event_id));"
    "CREATE TABLE idempotency ("
    " user_id TEXT NOT NULL,"
    " key TEXT NOT NULL,"
    " request_hash TEXT NOT NULL,"
    " task_id INTEGER NOT NULL,"
    " created_at_ms INTEGER NOT NULL,"
    " PRIMARY KEY (user_id, key));"
    "CREATE TABLE deleted_users ("
    " id TEXT PRIMARY KEY,"
    " password_hash TEXT NOT NULL,"
    " token_version INTEGER NOT NULL,"
    " deleted_at_ms INTEGER NOT NULL)",
    /* 3 (issue 17): tombstones keep the whole user, so that compensation restores what
     * the delete wrote here, not what an event says (NULL in older tombstones) */
    "ALTER TABLE deleted_users ADD COLUMN email TEXT;"
    "ALTER TABLE deleted_users ADD COLUMN role TEXT;"
    "ALTER TABLE deleted_users ADD COLUMN created_at_ms INTEGER",
    /* 4 (issue 23): the push log. Triggers write one row per change of a task in the
     * change's own transaction, so every write (the actor's, the saga's unassign,
     * anyone's) has its event, and only committed ones are ever read; AUTOINCREMENT
     * keeps seq growing in commit order and never reused after a purge. */
    "CREATE TABLE task_events ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " type TEXT NOT NULL,"
    " at_ms INTEGER NOT NULL,"
    " task_id INTEGER NOT NULL,"
    " title TEXT NOT NULL,"
    " description TEXT NOT NULL,"
    " status TEXT NOT NULL,"
    " assigned_to TEXT,"
    " created_by TEXT NOT NULL,"
    " created_at_ms INTEGER NOT NULL,"
    " updated_at_ms INTEGER NOT NULL,"
    " version INTEGER NOT NULL,"
    " prev_assigned_to TEXT,"
    " prev_status TEXT);"
    "CREATE TRIGGER task_events_created AFTER INSERT ON tasks BEGIN"
    " INSERT INTO task_events (type, at_ms, task_id, title, description, status, assigned_to,"
    "  created_by, created_at_ms, updated_at_ms, version)"
    " VALUES ('created', NEW.updated_at_ms, NEW.id, NEW.title, NEW.description, NEW.status,"
    "  NEW.assigned_to, NEW.created_by, NEW.created_at_ms, NEW.updated_at_ms, NEW.version);"
    " END;"
    "CREATE TRIGGER task_events_updated AFTER UPDATE ON tasks BEGIN"
    " INSERT INTO task_events (type, at_ms, task_id, title, description, status, assigned_to,"
    "  created_by, created_at_ms, updated_at_ms, version, prev_assigned_to, prev_status)"
    " VALUES (CASE WHEN NEW.assigned_to IS NOT OLD.assigned_to THEN 'assigned'"
    "  ELSE 'updated' END, NEW.updated_at_ms, NEW.id, NEW.title, NEW.description, NEW.status,"
    "  NEW.assigned_to, NEW.created_by, NEW.created_at_ms, NEW.updated_at_ms, NEW.version,"
    "  OLD.assigned_to, OLD.status);"
    " END;"
    "CREATE TRIGGER task_events_deleted AFTER DELETE ON tasks BEGIN"
    " INSERT INTO task_events (type, at_ms, task_id, title, description, status, assigned_to,"
    "  created_by, created_at_ms, updated_at_ms, version, prev_assigned_to, prev_status)"
    " VALUES ('deleted', CAST(round((julianday('now') - 2440587.5) * 86400000) AS INTEGER),"
    "  OLD.id, OLD.title, OLD.description, OLD.status, OLD.assigned_to, OLD.created_by,"
    "  OLD.created_at_ms, OLD.updated_at_ms, OLD.version, OLD.assigned_to, OLD.status);"
    " END",
};

#define KNOWN ((int)(sizeof(migrations) / sizeof(migrations[0])))

int tms__sqlite_schema_version(void)
{
    return KNOWN;
}

static int current_version(sqlite3 *db, int *version)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, "SELECT coalesce(max(version), 0) FROM schema_migrations", -1,
                                &st, NULL);
    if (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        *version = sqlite3_column_int(st, 0);
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    return rc;
}

static int record_version(sqlite3 *db, int version)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db,
                                "INSERT INTO schema_migrations (version, applied_at)"
                                " VALUES (?1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
                                -1, &st, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_int(st, 1, version);
        rc = sqlite3_step(st);
        if (rc == SQLITE_DONE)
            rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    return rc;
}

/* The relay deletes a sent event's row (outbox.c); the rows that earlier versions marked
 * sent and kept go at each start (normally none: then only a read, no write lock). In
 * batches that each commit, so another process on the file waits for one batch at most,
 * and a start killed midway keeps what it deleted. Not a migration, so that a binary of
 * an earlier version still starts on this file (a rollback); a failure is only logged,
 * as nothing reads a sent row. */
enum { PURGE_BATCH = 10000 };
static void purge_sent(sqlite3 *db)
{
    sqlite3_stmt *any = NULL, *del = NULL;
    long long total = 0;
    int rc = sqlite3_prepare_v2(db, "SELECT 1 FROM outbox WHERE sent_at_ms IS NOT NULL LIMIT 1", -1,
                                &any, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(any);
    sqlite3_reset(any); /* an active read would hold every batch in one transaction */
    if (rc == SQLITE_ROW)
        rc = sqlite3_prepare_v2(db,
                                "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox"
                                " WHERE sent_at_ms IS NOT NULL LIMIT ?1)",
                                -1, &del, NULL);
    while (rc == SQLITE_OK && del) {
        sqlite3_bind_int(del, 1, PURGE_BATCH);
        rc = sqlite3_step(del);
        sqlite3_reset(del);
        if (rc != SQLITE_DONE)
            break;
        rc = SQLITE_OK;
        total += sqlite3_changes(db);
        if (sqlite3_changes(db) < PURGE_BATCH)
            break;
    }
    if (rc != SQLITE_OK && rc != SQLITE_DONE)
        tms_log_warn("sqlite_outbox_purge_failed", "deleted=%lld error=\"%s\"", total,
                     sqlite3_errmsg(db));
    else if (total > 0)
        tms_log_info("sqlite_outbox_purged", "sent=%lld", total);
    sqlite3_finalize(any);
    sqlite3_finalize(del);
}

/* Each step reads the version and applies one migration inside one IMMEDIATE
 * transaction, so two processes migrating the same file at once apply each
 * migration exactly once: the second waits for the write lock, then sees the new
 * version. */
int tms__sqlite_apply_migrations(sqlite3 *db, char *err, size_t err_len)
{
    for (;;) {
        int version = 0;
        if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
            snprintf(err, err_len, "sqlite: cannot begin migration: %s", sqlite3_errmsg(db));
            return -TMS_EIO;
        }
        if (sqlite3_exec(db,
                         "CREATE TABLE IF NOT EXISTS schema_migrations ("
                         " version INTEGER PRIMARY KEY, applied_at TEXT)",
                         NULL, NULL, NULL) != SQLITE_OK ||
            current_version(db, &version) != SQLITE_OK) {
            snprintf(err, err_len, "sqlite: cannot read schema version: %s", sqlite3_errmsg(db));
            goto fail;
        }
        if (version > KNOWN) {
            snprintf(err, err_len,
                     "sqlite: database schema version %d is newer than this binary knows (%d);"
                     " upgrade tms",
                     version, KNOWN);
            goto fail;
        }
        if (version == KNOWN) {
            if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
                snprintf(err, err_len, "sqlite: commit failed: %s", sqlite3_errmsg(db));
                goto fail;
            }
            purge_sent(db);
            return 0;
        }
        if (sqlite3_exec(db, migrations[version], NULL, NULL, NULL) != SQLITE_OK ||
            record_version(db, version + 1) != SQLITE_OK ||
            sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
            snprintf(err, err_len, "sqlite: migration %d failed: %s", version + 1,
                     sqlite3_errmsg(db));
            goto fail;
        }
        tms_log_info("sqlite_migrated", "version=%d", version + 1);
    }
fail:
    if (!sqlite3_get_autocommit(db))
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return -TMS_EIO;
}
