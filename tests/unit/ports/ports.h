/* The harness of the conformance suites (tests/unit/ports/<port>_conformance.c): one
 * set of tests written against a port of core/, run against every adapter of it.
 * Each suite has a table of adapters; ctest runs the suite once per adapter with
 * the adapter's name as its argument (ports_<port>_<adapter>), so a skip is visible
 * per adapter: an adapter whose service is not configured (TMS_TEST_PG_URL,
 * TMS_TEST_MONGO_URL, TMS_TEST_SMTP_URL) exits 77. Everything runs on one loop, as
 * the actors would drive the port: requests go out, replies come back to a mailbox
 * of that loop. */
#ifndef TMS_TEST_PORTS_H
#define TMS_TEST_PORTS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "core/mailbox.h"
#include "core/metrics.h"
#include "core/status.h"
#include "test.h"
#include "test_loop.h"

#define SKIPPED 77

/* Each suite uses the helpers it needs. */
#pragma GCC diagnostic ignored "-Wunused-function"

static uv_loop_t loop;
static tms_mailbox_t *replies; /* where every reply of the suite comes back */

/* An adapter of the port under test: how to make a fresh, empty instance. */
typedef struct adapter {
    const char *name;
    /** Before the tests: 0 when the adapter can run here, SKIPPED when its service is
     * not configured (the reason printed), or another exit code. */
    int (*setup)(void);
    /** After the tests: drop what setup made. */
    void (*teardown)(void);
} adapter_t;

static void on_request(void *owner, tms_msg_t *msg)
{
    (void)owner; /* nothing sends requests to the test */
    if (msg->free_fn)
        msg->free_fn(msg);
}

/* A reply: the op goes to the slot msg->ctx points at. */
static void on_reply(tms_msg_t *msg)
{
    *(tms_msg_t **)msg->ctx = msg;
}

/* The suite's loop (tests/unit/test_loop.h): until *flag reaches want, or ms pass; true
 * when it did. */
static bool spin_until(const int *flag, int want, int ms)
{
    return tms_test_spin_until(&loop, flag, want, ms);
}

/* A few loop turns without blocking for long. */
static void spin(int ms)
{
    tms_test_spin(&loop, ms);
}

static bool got_reply(void *got)
{
    return *(tms_msg_t **)got != NULL;
}

/* Wait for the reply whose slot is *got (bounded: a store that never answers fails the
 * test instead of hanging it). */
static tms_msg_t *wait_reply(tms_msg_t **got)
{
    tms_test_run_until(&loop, got_reply, got, 30000);
    CHECK(*got != NULL);
    if (!*got) {
        fprintf(stderr, "no reply within 30 s\n");
        exit(EXIT_FAILURE);
    }
    return *got;
}

/* The completion of a port's close. */
static void on_closed(void *arg)
{
    (*(int *)arg)++;
}

/* The metrics text has this line (or line prefix). */
static bool metric_has(const char *what)
{
    size_t len;
    char *text = tms_metrics_render(&len);
    bool found = strstr(text, what) != NULL;
    free(text);
    return found;
}

/* The suite's main: picks the adapter named by argv[1] from the table, sets it up,
 * runs tests(adapter) and tears down. */
static int run_suite(const char *suite, const adapter_t *adapters, size_t n, int argc, char **argv,
                     void (*tests)(const adapter_t *a))
{
    const adapter_t *a = NULL;
    int rc;
    for (size_t i = 0; argc > 1 && i < n; i++) {
        if (strcmp(argv[1], adapters[i].name) == 0)
            a = &adapters[i];
    }
    if (!a) {
        fprintf(stderr, "usage: %s <adapter>; adapters:", suite);
        for (size_t i = 0; i < n; i++)
            fprintf(stderr, " %s", adapters[i].name);
        fprintf(stderr, "\n");
        return 2;
    }
    rc = a->setup();
    if (rc == SKIPPED) {
        printf("%s %s: skipped\n", suite, a->name);
        return SKIPPED;
    }
    if (rc != 0)
        return rc;
    uv_loop_init(&loop);
    replies = tms_mailbox_new(&loop, "conformance", 1024, on_request, NULL);
    fprintf(stderr, "%s on %s\n", suite, a->name);
    tests(a);
    tms_mailbox_free(&replies);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
    if (a->teardown)
        a->teardown();
    tms_metrics_reset();
    TEST_EXIT();
}

#endif
