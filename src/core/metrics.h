/* Process-wide Prometheus metrics: counters, gauges computed on scrape, and
 * histograms with fixed latency buckets. Registration takes a lock and is O(n) in
 * the number of series (cache the returned pointer on hot paths); updates are
 * lock-free atomics, safe from any thread. */
#ifndef TMS_CORE_METRICS_H
#define TMS_CORE_METRICS_H

#include <stddef.h>
#include <stdint.h>

typedef struct tms_counter tms_counter_t;
typedef struct tms_histogram tms_histogram_t;

/** Get or create the counter `name{labels}`; labels is preformatted Prometheus label
 * text without braces (`route="/x",status="200"`) or "" for none. Never NULL. */
tms_counter_t *tms_metrics_counter(const char *name, const char *help, const char *labels);

/** Add n to a counter. */
void tms_counter_add(tms_counter_t *c, uint64_t n);

/** Current value of a counter. */
uint64_t tms_counter_value(const tms_counter_t *c);

/** Get or create a histogram of seconds with buckets from 100 us to 10 s. */
tms_histogram_t *tms_metrics_histogram(const char *name, const char *help, const char *labels);

/** Record one observation in seconds. */
void tms_histogram_observe(tms_histogram_t *h, double seconds);

/** Register a gauge computed at scrape time by fn(arg); fn must be thread-safe. */
void tms_metrics_gauge_fn(const char *name, const char *help, const char *labels,
                          double (*fn)(void *arg), void *arg);

/** The same for a counter whose value a function computes (process_cpu_seconds_total). */
void tms_metrics_counter_fn(const char *name, const char *help, const char *labels,
                            double (*fn)(void *arg), void *arg);

/** Register the process's own series (the Prometheus client conventions):
 * process_cpu_seconds_total, process_resident_memory_bytes,
 * process_virtual_memory_bytes, process_open_fds, process_max_fds,
 * process_start_time_seconds, and tms_build_info{version,commit} 1. Read from /proc
 * and getrusage at scrape time. Call once per process (tms serve does). */
void tms_metrics_process_register(void);

/** From now on, gauges registered from the calling thread get `label` (preformatted,
 * e.g. `worker="1"`; "" or NULL: none) appended to their labels, so that each worker
 * loop exports its own series; counters and histograms stay shared and sum over all
 * threads. */
void tms_metrics_thread_label(const char *label);

/** Unregister every gauge registered under the calling thread's label (before the
 * objects their functions read are freed; a scrape in progress finishes first). */
void tms_metrics_drop_thread_gauges(void);

/** Unregister every gauge whose function reads arg (before arg is freed; a scrape in
 * progress finishes first). A gauge registered again since with another arg stays. */
void tms_metrics_drop_gauges_of(const void *arg);

/** Render every series in Prometheus text format 0.0.4; caller frees the result. */
char *tms_metrics_render(size_t *len);

/** Drop every series (tests and shutdown). */
void tms_metrics_reset(void);

#endif
