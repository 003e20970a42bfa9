/* The store backends of the store suites (user store, task store, outbox): each opens
 * a fresh, empty store on the suite's loop and hands out every port it serves;
 * closing goes through the ports' vtables only. SQLite runs on a file in a temporary
 * directory; PostgreSQL (TMS_TEST_PG_URL) and MongoDB (TMS_TEST_MONGO_URL) on a
 * database of this process, emptied before each test and dropped at the end. */
#ifndef TMS_TEST_PORTS_STORES_H
#define TMS_TEST_PORTS_STORES_H

#include <libpq-fe.h>
#include <mongoc/mongoc.h>
#include <sqlite3.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/outbox.h"
#include "core/task_store.h"
#include "core/user_store.h"
#include "io/store/mongo/mongo.h"
#include "io/store/pg/pg.h"
#include "io/store/sqlite/sqlite.h"
#include "ports.h"

typedef struct store {
    const char *backend;
    tms_user_store_t *users; /* NULL when the backend serves none */
    tms_task_store_t *tasks;
    tms_outbox_t *outbox;
} store_t;

static char sqlite_dir[64], sqlite_path[128];
static char pg_base[512], pg_url[600], pg_db[64];
static char mongo_url[600], mongo_db[64];

/* ---- SQLite ----------------------------------------------------------------- */

static void sqlite_remove(void)
{
    const char *suffix[] = {"", "-wal", "-shm", "-journal"};
    char p[160];
    for (size_t i = 0; i < sizeof(suffix) / sizeof(suffix[0]); i++) {
        snprintf(p, sizeof(p), "%s%s", sqlite_path, suffix[i]);
        unlink(p);
    }
}

static int sqlite_setup(void)
{
    snprintf(sqlite_dir, sizeof(sqlite_dir), "/tmp/tms_ports_XXXXXX");
    if (!mkdtemp(sqlite_dir)) {
        perror("mkdtemp");
        return EXIT_FAILURE;
    }
    snprintf(sqlite_path, sizeof(sqlite_path), "%s/tms.db", sqlite_dir);
    return 0;
}

static void sqlite_teardown(void)
{
    sqlite_remove();
    rmdir(sqlite_dir);
}

/* Runs sql on a connection of the test's own; the first column of the first row as
 * an integer (0 with no row, -1 on error). */
static long long sqlite_query(const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    long long v = -1;
    if (sqlite3_open(sqlite_path, &db) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
        int rc = sqlite3_step(st);
        v = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : rc == SQLITE_DONE ? 0 : -1;
    } else {
        fprintf(stderr, "sqlite_query: %s: %s\n", sql, sqlite3_errmsg(db));
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* ---- PostgreSQL --------------------------------------------------------------- */

/* A blocking side connection to url: the first value of sql as an integer (0 for a
 * command, -1 on error). */
static long long pg_query_at(const char *url, const char *sql)
{
    PGconn *c = PQconnectdb(url);
    PGresult *r;
    long long v = -1;
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "pg: %s", PQerrorMessage(c));
        PQfinish(c);
        return -1;
    }
    r = PQexec(c, sql);
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0)
        v = atoll(PQgetvalue(r, 0, 0));
    else if (PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK)
        v = 0;
    else
        fprintf(stderr, "pg: %s: %s", sql, PQerrorMessage(c));
    PQclear(r);
    PQfinish(c);
    return v;
}

static long long pg_query(const char *sql)
{
    return pg_query_at(pg_url, sql);
}

static int pg_setup(void)
{
    const char *env = getenv("TMS_TEST_PG_URL");
    char sql[128], err[512] = "";
    const char *slash, *q;
    if (!env || !env[0]) {
        printf("TMS_TEST_PG_URL not set\n");
        return SKIPPED;
    }
    /* The same server, a database of our own: replace the path of the URL. */
    snprintf(pg_base, sizeof(pg_base), "%s", env);
    snprintf(pg_db, sizeof(pg_db), "tms_ports_%d", (int)getpid());
    slash = strchr(strstr(pg_base, "://") + 3, '/');
    q = strchr(pg_base, '?');
    snprintf(pg_url, sizeof(pg_url), "%.*s/%s%s",
             slash ? (int)(slash - pg_base) : (int)strlen(pg_base), pg_base, pg_db, q ? q : "");
    snprintf(sql, sizeof(sql), "CREATE DATABASE %s", pg_db);
    if (pg_query_at(pg_base, sql) != 0)
        return EXIT_FAILURE;
    if (tms_pg_migrate_sync(pg_url, err, sizeof(err)) != 0) {
        fprintf(stderr, "migrate: %s\n", err);
        return EXIT_FAILURE;
    }
    return 0;
}

static void pg_teardown(void)
{
    char sql[128];
    snprintf(sql, sizeof(sql), "DROP DATABASE %s WITH (FORCE)", pg_db);
    pg_query_at(pg_base, sql);
}

/* ---- MongoDB ------------------------------------------------------------------ */

static int mongo_setup(void)
{
    const char *base = getenv("TMS_TEST_MONGO_URL");
    const char *slash, *query;
    if (!base || !base[0]) {
        printf("TMS_TEST_MONGO_URL not set\n");
        return SKIPPED;
    }
    snprintf(mongo_db, sizeof(mongo_db), "tms_ports_%d", (int)getpid());
    slash = strchr(base + strlen("mongodb://"), '/');
    query = strchr(base, '?');
    snprintf(mongo_url, sizeof(mongo_url), "%.*s/%s%s",
             (int)(slash ? slash - base : (long)strlen(base)), base, mongo_db, query ? query : "");
    return 0;
}

static void mongo_drop(void)
{
    mongoc_client_t *client = mongoc_client_new(mongo_url);
    mongoc_database_t *db = mongoc_client_get_database(client, mongo_db);
    mongoc_database_drop(db, NULL);
    mongoc_database_destroy(db);
    mongoc_client_destroy(client);
}

static void mongo_teardown(void)
{
    mongo_drop();
}

/* ---- every backend -------------------------------------------------------------- */

/* A fresh, empty store of backend on the loop, with every port it serves. */
static store_t open_store(const char *backend)
{
    store_t s = {.backend = backend};
    char err[512] = "";
    if (strcmp(backend, "sqlite") == 0) {
        tms_sqlite_t *db;
        sqlite_remove();
        db = tms_sqlite_open(&loop, sqlite_path, 64, err, sizeof(err));
        if (db) {
            s.users = tms_sqlite_user_store(db);
            s.tasks = tms_sqlite_task_store(db);
            s.outbox = tms_sqlite_outbox(db);
        }
    } else if (strcmp(backend, "postgres") == 0) {
        tms_pg_t *pg;
        pg_query("TRUNCATE tasks, outbox, inbox, idempotency RESTART IDENTITY");
        pg = tms_pg_open(&loop, pg_url, &(tms_pg_options_t){.pool_size = 2}, err, sizeof(err));
        /* The pool connects on the loop: a probe before then answers UNAVAILABLE. */
        for (int i = 0; pg && i < 500 && tms_pg_connections_up(pg) < 2; i++)
            spin(10);
        if (pg) {
            s.tasks = tms_pg_task_store(pg);
            s.outbox = tms_pg_outbox(pg);
        }
    } else if (strcmp(backend, "mongodb") == 0) {
        tms_mongo_t *m;
        mongo_drop();
        m = tms_mongo_open(&loop, mongo_url, &(tms_mongo_options_t){.pool_size = 4}, err,
                           sizeof(err));
        if (m) {
            s.users = tms_mongo_user_store(m);
            s.outbox = tms_mongo_outbox(m);
        }
    }
    if (!s.users && !s.tasks && !s.outbox) {
        fprintf(stderr, "open %s: %s\n", backend, err);
        exit(EXIT_FAILURE);
    }
    return s;
}

/* Close every port through its vtable and wait for each callback: the backend is gone
 * once the last has run. */
static void close_store(store_t *s)
{
    int closed = 0, want = 0;
    if (s->users) {
        s->users->close(s->users, on_closed, &closed);
        want++;
    }
    if (s->tasks) {
        s->tasks->close(s->tasks, on_closed, &closed);
        want++;
    }
    if (s->outbox) {
        s->outbox->close(s->outbox, on_closed, &closed);
        want++;
    }
    CHECK_EQ_INT(closed, 0); /* never inside close */
    CHECK(spin_until(&closed, want, 30000));
    spin(20);
    CHECK_EQ_INT(closed, want); /* each exactly once */
    s->users = NULL;
    s->tasks = NULL;
    s->outbox = NULL;
}

/* A raw query on the backend's own database, for what the port does not show (how a
 * value is stored); -2 for a backend without SQL. */
static long long sql_query(const store_t *s, const char *sql)
{
    if (strcmp(s->backend, "sqlite") == 0)
        return sqlite_query(sql);
    if (strcmp(s->backend, "postgres") == 0)
        return pg_query(sql);
    return -2;
}

#endif
