/* The one FIFO shape the code uses everywhere: a singly linked list kept as head and
 * tail pointers, linked through a member of the node (`next`, or a second link when a
 * node sits in two lists). */
#ifndef TMS_CORE_QUEUE_H
#define TMS_CORE_QUEUE_H

#include <stddef.h>

/** Appends node at tail: TMS_FIFO_APPEND(q->head, q->tail, job, next). The arguments
 * are evaluated more than once: pass plain lvalues. */
#define TMS_FIFO_APPEND(head, tail, node, link)                                                    \
    do {                                                                                           \
        (node)->link = NULL;                                                                       \
        if (tail)                                                                                  \
            (tail)->link = (node);                                                                 \
        else                                                                                       \
            (head) = (node);                                                                       \
        (tail) = (node);                                                                           \
    } while (0)

#endif
