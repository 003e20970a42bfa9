/* The reference of the sqlite_post pair (issue 20): what POST /api/task assigned writes
 * on SQLite, done the plain way. Each of N threads has its own connection with TMS's
 * pragmas (WAL, synchronous=FULL, foreign_keys=ON, busy timeout 5 s) and runs, over
 * and over, one transaction per create: BEGIN IMMEDIATE; INSERT the task RETURNING its
 * row; INSERT its outbox row (the notification JSON TMS writes); COMMIT. Prints
 * "creates <n> seconds <s> rps <r>" after the run.
 *
 *   cc -O2 -o sqlite_ref bench/sqlite_ref.c -lsqlite3 -lpthread
 *   sqlite_ref DB THREADS SECONDS ASSIGNEE CREATOR
 *
 * DB must have TMS's schema (`tms migrate --create --set data.dir=...`). */
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *db_path, *assignee, *creator;
static atomic_long creates, failures;
static atomic_int stop;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int exec(sqlite3 *db, const char *sql)
{
    return sqlite3_exec(db, sql, NULL, NULL, NULL);
}

static void event_id(char out[37], uint64_t *rng)
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 36; i++) {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        out[i] = (i == 8 || i == 13 || i == 18 || i == 23) ? '-' : hex[*rng & 15];
    }
    out[36] = '\0';
}

static void *run(void *arg)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *task = NULL, *outbox = NULL, *begin = NULL, *commit = NULL;
    uint64_t rng = (uint64_t)(uintptr_t)arg * 0x9e3779b97f4a7c15ULL + (uint64_t)now_ms();
    char eid[37], key[24], payload[512], ts[32];
    if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
            SQLITE_OK ||
        exec(db, "PRAGMA journal_mode=WAL") != SQLITE_OK ||
        exec(db, "PRAGMA synchronous=FULL") != SQLITE_OK ||
        exec(db, "PRAGMA foreign_keys=ON") != SQLITE_OK) {
        fprintf(stderr, "sqlite_ref: open: %s\n", sqlite3_errmsg(db));
        exit(1);
    }
    sqlite3_busy_timeout(db, 5000);
    if (sqlite3_prepare_v2(db,
                           "INSERT INTO tasks (title, description, status, assigned_to,"
                           " created_by, created_at_ms, updated_at_ms, version)"
                           " VALUES (?1, ?2, 'open', ?3, ?4, ?5, ?5, 1) RETURNING id, title,"
                           " description, status, assigned_to, created_by, created_at_ms,"
                           " updated_at_ms, version",
                           -1, &task, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db,
                           "INSERT INTO outbox (event_id, topic, key, payload, created_at_ms)"
                           " VALUES (?1, 'notifications', ?2, ?3, ?4)",
                           -1, &outbox, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "BEGIN IMMEDIATE", -1, &begin, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "COMMIT", -1, &commit, NULL) != SQLITE_OK) {
        fprintf(stderr, "sqlite_ref: prepare: %s\n", sqlite3_errmsg(db));
        exit(1);
    }
    while (!atomic_load(&stop)) {
        int64_t now = now_ms(), id = 0;
        time_t secs = (time_t)(now / 1000);
        struct tm tm;
        int rc = sqlite3_step(begin);
        sqlite3_reset(begin);
        if (rc != SQLITE_DONE) {
            atomic_fetch_add(&failures, 1);
            continue;
        }
        sqlite3_bind_text(task, 1, "Bench task", -1, SQLITE_STATIC);
        sqlite3_bind_text(task, 2, "A task created over and over", -1, SQLITE_STATIC);
        sqlite3_bind_text(task, 3, assignee, -1, SQLITE_STATIC);
        sqlite3_bind_text(task, 4, creator, -1, SQLITE_STATIC);
        sqlite3_bind_int64(task, 5, now);
        while ((rc = sqlite3_step(task)) == SQLITE_ROW)
            id = sqlite3_column_int64(task, 0);
        sqlite3_reset(task);
        if (rc == SQLITE_DONE) {
            gmtime_r(&secs, &tm);
            strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
            event_id(eid, &rng);
            snprintf(key, sizeof(key), "%lld", (long long)id);
            snprintf(payload, sizeof(payload),
                     "{\"type\": \"task_created\", \"user_id\": \"%s\", \"task_id\": \"%s\","
                     " \"event_id\": \"%s\", \"title\": \"Bench task\", \"occurred_at\":"
                     " \"%s.%03dZ\", \"assigned_by\": \"%s\"}",
                     assignee, key, eid, ts, (int)(now % 1000), creator);
            sqlite3_bind_text(outbox, 1, eid, -1, SQLITE_STATIC);
            sqlite3_bind_text(outbox, 2, key, -1, SQLITE_STATIC);
            sqlite3_bind_text(outbox, 3, payload, -1, SQLITE_STATIC);
            sqlite3_bind_int64(outbox, 4, now);
            rc = sqlite3_step(outbox);
            sqlite3_reset(outbox);
        }
        if (rc == SQLITE_DONE) {
            rc = sqlite3_step(commit);
            sqlite3_reset(commit);
        }
        if (rc == SQLITE_DONE) {
            atomic_fetch_add(&creates, 1);
        } else {
            exec(db, "ROLLBACK");
            atomic_fetch_add(&failures, 1);
        }
    }
    sqlite3_finalize(task);
    sqlite3_finalize(outbox);
    sqlite3_finalize(begin);
    sqlite3_finalize(commit);
    sqlite3_close(db);
    return NULL;
}

int main(int argc, char **argv)
{
    int threads;
    double seconds;
    pthread_t *t;
    struct timespec t0, t1;
    if (argc != 6) {
        fprintf(stderr, "usage: sqlite_ref DB THREADS SECONDS ASSIGNEE CREATOR\n");
        return 2;
    }
    db_path = argv[1];
    threads = atoi(argv[2]);
    seconds = atof(argv[3]);
    assignee = argv[4];
    creator = argv[5];
    if (threads < 1 || seconds <= 0)
        return 2;
    t = calloc((size_t)threads, sizeof(*t));
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < threads; i++)
        pthread_create(&t[i], NULL, run, (void *)(uintptr_t)(i + 1));
    struct timespec d = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
    nanosleep(&d, NULL);
    atomic_store(&stop, 1);
    for (int i = 0; i < threads; i++)
        pthread_join(t[i], NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    seconds = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("creates %ld failures %ld seconds %.3f rps %.1f\n", atomic_load(&creates),
           atomic_load(&failures), seconds, (double)atomic_load(&creates) / seconds);
    free(t);
    return 0;
}
