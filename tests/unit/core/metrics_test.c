/* Metrics of worker threads: gauges registered under a thread label carry it (one
 * series per worker), counters are shared and sum over threads, and dropping a
 * thread's gauges leaves the other threads' series alone. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/metrics.h"
#include "test.h"

static double value_of(void *arg)
{
    return (double)*(int *)arg;
}

static int values[2] = {7, 9};
static int drop_in_worker = -1;

static void *worker(void *arg)
{
    int i = (int)(long)arg;
    char label[32];
    snprintf(label, sizeof(label), "worker=\"%d\"", i);
    tms_metrics_thread_label(label);
    tms_metrics_gauge_fn("t_depth", "depth", "actor=\"auth\"", value_of, &values[i]);
    tms_metrics_gauge_fn("t_lag", "lag", "", value_of, &values[i]);
    tms_counter_add(tms_metrics_counter("t_total", "total", ""), (uint64_t)(i + 1));
    if (i == drop_in_worker)
        tms_metrics_drop_thread_gauges();
    return NULL;
}

static char *render(void)
{
    size_t len;
    return tms_metrics_render(&len);
}

static void run_workers(void)
{
    pthread_t th[2];
    for (long i = 0; i < 2; i++)
        pthread_create(&th[i], NULL, worker, (void *)i);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
}

static void test_labels_per_thread(void)
{
    char *text;
    drop_in_worker = -1;
    run_workers();
    text = render();
    CHECK(strstr(text, "t_depth{actor=\"auth\",worker=\"0\"} 7\n") != NULL);
    CHECK(strstr(text, "t_depth{actor=\"auth\",worker=\"1\"} 9\n") != NULL);
    CHECK(strstr(text, "t_lag{worker=\"0\"} 7\n") != NULL);
    CHECK(strstr(text, "t_lag{worker=\"1\"} 9\n") != NULL);
    CHECK(strstr(text, "t_total 3\n") != NULL); /* 1 + 2, one series */
    free(text);
    tms_metrics_gauge_fn("t_main", "unlabelled thread", "", value_of, &values[0]);
    text = render();
    CHECK(strstr(text, "t_main 7\n") != NULL);
    free(text);
    tms_metrics_reset();
}

static void test_drop_own_gauges_only(void)
{
    char *text;
    drop_in_worker = 1;
    run_workers();
    text = render();
    CHECK(strstr(text, "t_lag{worker=\"0\"} 7\n") != NULL);
    CHECK(strstr(text, "worker=\"1\"") == NULL);
    CHECK(strstr(text, "t_total 3\n") != NULL);
    free(text);
    tms_metrics_drop_thread_gauges(); /* this thread has no label: nothing goes */
    text = render();
    CHECK(strstr(text, "t_lag{worker=\"0\"} 7\n") != NULL);
    free(text);
    tms_metrics_reset();
}

int main(void)
{
    RUN_TEST(test_labels_per_thread);
    RUN_TEST(test_drop_own_gauges_only);
    TEST_EXIT();
}
