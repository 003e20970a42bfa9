#include "core/workpool.h"

#include <pthread.h>
#include <stdlib.h>

#include "core/alloc.h"

struct tms_workpool {
    tms_mailbox_t *queue;
    int nthreads;
    pthread_t *threads;
};

static void *worker(void *arg)
{
    tms_workpool_t *pool = arg;
    tms_msg_t *msg;
    /* take() returns NULL only once the queue is closed and drained. */
    while ((msg = tms_mailbox_take(pool->queue, -1)) != NULL) {
        tms_job_t *job = (tms_job_t *)msg;
        job->run(job);
        tms_mailbox_reply(&job->msg);
    }
    return NULL;
}

tms_workpool_t *tms_workpool_new(const char *name, int threads, size_t capacity)
{
    tms_workpool_t *pool = tms_new(tms_workpool_t);
    pool->queue = tms_mailbox_new_threaded(name, capacity);
    pool->nthreads = threads > 0 ? threads : 1;
    pool->threads = tms_calloc((size_t)pool->nthreads, sizeof(pthread_t));
    for (int i = 0; i < pool->nthreads; i++) {
        if (pthread_create(&pool->threads[i], NULL, worker, pool) != 0)
            tms_oom(__FILE__, __LINE__);
    }
    return pool;
}

int tms_workpool_submit(tms_workpool_t *pool, tms_job_t **job)
{
    tms_msg_t *msg = &(*job)->msg;
    int rc;
    msg->kind = TMS_MSG_REQUEST;
    rc = tms_mailbox_post(pool->queue, &msg);
    if (rc == 0)
        *job = NULL;
    return rc;
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
    tms_mailbox_free(&pool->queue);
    free(pool->threads);
    free(pool);
}
