#define _GNU_SOURCE /* pthread_setname_np, gettid */
#include "core/workpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "core/alloc.h"
#include "core/status.h"

/* Jobs of one key in the pool (queued or running); freed when the last one ends. */
struct tms_job_key {
    tms_job_key_t *next; /* hash chain */
    uint64_t hash;
    size_t jobs;
    char key[];
};

struct tms_workpool {
    tms_mailbox_t *queue;
    int nthreads;
    int nice; /* of each worker thread (Linux: nice is per thread) */
    int idle; /* workers at SCHED_IDLE where the kernel has it */
    int kick; /* a kicker runs (always with idle) */
    /* An idle pool's kicker: while a job runs, it wakes every KICK_NS (see kicker()). */
    pthread_t kicker;
    pthread_mutex_t run_lock;
    pthread_cond_t run_cond;
    int running; /* jobs running now */
    int stopping;
    atomic_uint_least64_t kicks; /* the kicker's wake-ups, for tests */
    pthread_t *threads;
    pthread_mutex_t keys_lock; /* the key table */
    tms_job_key_t **buckets;   /* power of two; at most one key per job in the pool */
    size_t nbuckets, nkeys;
    unsigned char seed[crypto_shorthash_KEYBYTES]; /* keys come from clients */
};

static uint64_t key_hash(tms_workpool_t *pool, const char *key)
{
    unsigned char h[crypto_shorthash_BYTES];
    uint64_t v;
    crypto_shorthash(h, (const unsigned char *)key, strlen(key), pool->seed);
    memcpy(&v, h, sizeof(v));
    return v;
}

/* Under keys_lock. */
static tms_job_key_t *key_find(tms_workpool_t *pool, const char *key, uint64_t h)
{
    tms_job_key_t *k;
    for (k = pool->buckets[h & (pool->nbuckets - 1)]; k; k = k->next) {
        if (k->hash == h && strcmp(k->key, key) == 0)
            return k;
    }
    return NULL;
}

/* Under keys_lock: double the buckets once there are more keys than them. */
static void keys_grow(tms_workpool_t *pool)
{
    size_t n = pool->nbuckets * 2;
    tms_job_key_t **b;
    if (pool->nkeys <= pool->nbuckets)
        return;
    b = tms_calloc(n, sizeof(*b));
    for (size_t i = 0; i < pool->nbuckets; i++) {
        tms_job_key_t *k, *next;
        for (k = pool->buckets[i]; k; k = next) {
            next = k->next;
            k->next = b[k->hash & (n - 1)];
            b[k->hash & (n - 1)] = k;
        }
    }
    free(pool->buckets);
    pool->buckets = b;
    pool->nbuckets = n;
}

static void key_release(tms_workpool_t *pool, tms_job_key_t *k)
{
    tms_job_key_t **pp;
    pthread_mutex_lock(&pool->keys_lock);
    if (--k->jobs == 0) {
        for (pp = &pool->buckets[k->hash & (pool->nbuckets - 1)]; *pp != k; pp = &(*pp)->next)
            ;
        *pp = k->next;
        pool->nkeys--;
        free(k);
    }
    pthread_mutex_unlock(&pool->keys_lock);
}

/* How often an idle pool's kicker wakes while a job runs. */
#define KICK_NS 500000L

/* A thread at the normal policy that only sleeps for KICK_NS at a time while a job of
 * the pool runs: the kernel runs a thread at SCHED_IDLE when the loop on its CPU is
 * runnable too, now and then, and then lets it keep the CPU until the next tick (4 ms at
 * HZ 250) unless a normal thread wakes. This wake-up is one: it hands the CPU back to
 * the scheduler every KICK_NS, which then runs the loop (issue 20). */
static void *kicker(void *arg)
{
    tms_workpool_t *pool = arg;
    struct timespec ts = {0, KICK_NS};
    pthread_mutex_lock(&pool->run_lock);
    while (!pool->stopping) {
        if (!pool->running) {
            pthread_cond_wait(&pool->run_cond, &pool->run_lock);
            continue;
        }
        pthread_mutex_unlock(&pool->run_lock);
        nanosleep(&ts, NULL);
        atomic_fetch_add_explicit(&pool->kicks, 1, memory_order_relaxed);
        pthread_mutex_lock(&pool->run_lock);
    }
    pthread_mutex_unlock(&pool->run_lock);
    return NULL;
}

static void set_running(tms_workpool_t *pool, int delta)
{
    pthread_mutex_lock(&pool->run_lock);
    pool->running += delta;
    if (delta > 0 && pool->running == 1)
        pthread_cond_signal(&pool->run_cond);
    pthread_mutex_unlock(&pool->run_lock);
}

static void *worker(void *arg)
{
    tms_workpool_t *pool = arg;
    tms_msg_t *msg;
    /* Best effort: raising one's own nice value needs no privilege. */
    if (pool->nice > 0)
        (void)setpriority(PRIO_PROCESS, (id_t)gettid(), pool->nice);
#ifdef SCHED_IDLE
    /* Also needs no privilege. The nice value stays where it is not available. */
    if (pool->idle) {
        struct sched_param sp = {0};
        (void)pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp);
    }
#endif
    /* take() returns NULL only once the queue is closed and drained. */
    while ((msg = tms_mailbox_take(pool->queue, -1)) != NULL) {
        tms_job_t *job = (tms_job_t *)msg;
        tms_job_key_t *k = job->key;
        job->key = NULL;
        if (pool->kick)
            set_running(pool, 1);
        job->run(job);
        if (pool->kick)
            set_running(pool, -1);
        /* Before the reply: once answered, the client may submit again at once. */
        if (k)
            key_release(pool, k);
        tms_mailbox_reply(&job->msg);
    }
    return NULL;
}

tms_workpool_t *tms_workpool_new(const char *name, int threads, size_t capacity)
{
    return tms_workpool_new_nice(name, threads, capacity, 0);
}

static tms_workpool_t *pool_new(const char *name, int threads, size_t capacity, int nice, int idle,
                                int kick)
{
    tms_workpool_t *pool = tms_new(tms_workpool_t);
    pool->nice = nice < 0 ? 0 : nice > 19 ? 19 : nice;
    pool->idle = idle;
    pool->kick = idle || kick;
    pool->queue = tms_mailbox_new_threaded(name, capacity);
    pool->nthreads = threads > 0 ? threads : 1;
    pool->threads = tms_calloc((size_t)pool->nthreads, sizeof(pthread_t));
    pthread_mutex_init(&pool->keys_lock, NULL);
    pthread_mutex_init(&pool->run_lock, NULL);
    pthread_cond_init(&pool->run_cond, NULL);
    pool->nbuckets = 16;
    pool->buckets = tms_calloc(pool->nbuckets, sizeof(*pool->buckets));
    if (sodium_init() < 0)
        tms_oom(__FILE__, __LINE__);
    randombytes_buf(pool->seed, sizeof(pool->seed));
    for (int i = 0; i < pool->nthreads; i++) {
        char tname[16];
        if (pthread_create(&pool->threads[i], NULL, worker, pool) != 0)
            tms_oom(__FILE__, __LINE__);
        /* ps, top and perf then tell the pools apart (not the loop's name, inherited) */
        snprintf(tname, sizeof(tname), "tms-%s", name);
        pthread_setname_np(pool->threads[i], tname);
    }
    if (pool->kick) {
        char tname[16];
        if (pthread_create(&pool->kicker, NULL, kicker, pool) != 0)
            tms_oom(__FILE__, __LINE__);
        snprintf(tname, sizeof(tname), "tms-%.6s-kick", name);
        pthread_setname_np(pool->kicker, tname);
    }
    return pool;
}

tms_workpool_t *tms_workpool_new_nice(const char *name, int threads, size_t capacity, int nice)
{
    return pool_new(name, threads, capacity, nice, 0, 0);
}

tms_workpool_t *tms_workpool_new_kicked(const char *name, int threads, size_t capacity, int nice)
{
    return pool_new(name, threads, capacity, nice, 0, 1);
}

tms_workpool_t *tms_workpool_new_idle(const char *name, int threads, size_t capacity, int nice)
{
    return pool_new(name, threads, capacity, nice, 1, 1);
}

static int submit(tms_workpool_t *pool, tms_job_t **job, tms_job_key_t *key)
{
    tms_msg_t *msg = &(*job)->msg;
    int rc;
    msg->kind = TMS_MSG_REQUEST;
    (*job)->key = key;
    rc = tms_mailbox_post(pool->queue, &msg);
    if (rc == 0)
        *job = NULL;
    else
        (*job)->key = NULL;
    return rc;
}

int tms_workpool_submit(tms_workpool_t *pool, tms_job_t **job)
{
    return submit(pool, job, NULL);
}

int tms_workpool_submit_keyed(tms_workpool_t *pool, tms_job_t **job, const char *key,
                              size_t max_per_key)
{
    tms_job_key_t *k;
    uint64_t h;
    int rc;
    if (!max_per_key || !key)
        return submit(pool, job, NULL);
    h = key_hash(pool, key);
    pthread_mutex_lock(&pool->keys_lock);
    k = key_find(pool, key, h);
    if (k && k->jobs >= max_per_key) {
        pthread_mutex_unlock(&pool->keys_lock);
        return -TMS_ERANGE;
    }
    if (!k) {
        size_t len = strlen(key);
        k = tms_malloc(sizeof(*k) + len + 1);
        memcpy(k->key, key, len + 1);
        k->hash = h;
        k->jobs = 0;
        k->next = pool->buckets[h & (pool->nbuckets - 1)];
        pool->buckets[h & (pool->nbuckets - 1)] = k;
        pool->nkeys++;
        keys_grow(pool);
    }
    k->jobs++;
    pthread_mutex_unlock(&pool->keys_lock);
    rc = submit(pool, job, k);
    if (rc != 0)
        key_release(pool, k);
    return rc;
}

size_t tms_workpool_key_jobs(tms_workpool_t *pool, const char *key)
{
    tms_job_key_t *k;
    size_t n;
    uint64_t h = key_hash(pool, key);
    pthread_mutex_lock(&pool->keys_lock);
    k = key_find(pool, key, h);
    n = k ? k->jobs : 0;
    pthread_mutex_unlock(&pool->keys_lock);
    return n;
}

uint64_t tms_workpool_kicks(tms_workpool_t *pool)
{
    return atomic_load_explicit(&pool->kicks, memory_order_relaxed);
}

size_t tms_workpool_depth(tms_workpool_t *pool)
{
    return tms_mailbox_depth(pool->queue);
}

void tms_workpool_free(tms_workpool_t **ppool)
{
    tms_workpool_t *pool = *ppool;
    if (!pool)
        return;
    *ppool = NULL;
    tms_mailbox_close(pool->queue);
    for (int i = 0; i < pool->nthreads; i++)
        pthread_join(pool->threads[i], NULL);
    if (pool->kick) {
        pthread_mutex_lock(&pool->run_lock);
        pool->stopping = 1;
        pthread_cond_signal(&pool->run_cond);
        pthread_mutex_unlock(&pool->run_lock);
        pthread_join(pool->kicker, NULL);
    }
    pthread_mutex_destroy(&pool->run_lock);
    pthread_cond_destroy(&pool->run_cond);
    tms_mailbox_free(&pool->queue);
    free(pool->threads);
    free(pool->buckets); /* every job ran, so every key was released */
    pthread_mutex_destroy(&pool->keys_lock);
    free(pool);
}
