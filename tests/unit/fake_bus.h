/* A fake event bus for actor unit tests (fakes are fine in unit tests): subscribe
 * takes anything; ack counts the outcomes, keeps the last one (its dependency copied,
 * its strings cleared) and frees the delivery as a real bus does. */
#ifndef TMS_TEST_FAKE_BUS_H
#define TMS_TEST_FAKE_BUS_H

#include <stdio.h>
#include <stdlib.h>

#include "core/event_bus.h"

typedef struct fake_bus {
    tms_event_bus_t port;
    int acks;
    tms_ack_t last;
    char dependency[32];
} fake_bus_t;

static int fake_bus_subscribe(tms_event_bus_t *self, const char *topic, const char *group,
                              tms_mailbox_t *mailbox)
{
    (void)self, (void)topic, (void)group, (void)mailbox;
    return 0;
}

static void fake_bus_ack(tms_event_bus_t *self, tms_delivery_t **pd, tms_ack_t out)
{
    fake_bus_t *b = (fake_bus_t *)self;
    b->acks++;
    b->last = out;
    snprintf(b->dependency, sizeof(b->dependency), "%s", out.dependency ? out.dependency : "");
    b->last.dependency = b->last.reason = NULL;
    free((*pd)->payload);
    free(*pd);
    *pd = NULL;
}

/* A fake bus named "fake" with the functions above. */
static void fake_bus_init(fake_bus_t *b)
{
    b->port.name = "fake";
    b->port.subscribe = fake_bus_subscribe;
    b->port.ack = fake_bus_ack;
}

#endif
