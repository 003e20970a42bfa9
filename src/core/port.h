/* The lifecycle every port shares: the user store, task store, outbox and inbox, event
 * bus and mailer (core/user_store.h, task_store.h, outbox.h, event_bus.h, mailer.h).
 * It is libuv's uv_close(handle, cb) applied to ports, so that whoever wires adapters
 * closes each one through its vtable and waits on a callback, whatever the adapter.
 * Every port vtable has these two entries besides its operations:
 *
 *   size_t busy(self)
 *       Work the port accepted and has not finished: operations and mails submitted
 *       and not yet answered; for the bus, publishes whose done has not run and
 *       deliveries not yet acknowledged (and, while closing, consumers still leaving
 *       their groups). A snapshot, for metrics, tests and logs; safe from any
 *       thread for the stores, from the port's loop thread for the bus and mailers.
 *
 *   void close(self, cb, ctx)
 *       Called once, on the thread of the port's loop (the loop given to its
 *       adapter's constructor). In this order:
 *       1. From the call on, new work is refused: submit, publish and subscribe
 *          return -TMS_ECLOSED (a caller answers UNAVAILABLE, as for a full queue).
 *       2. What was accepted is finished or failed, never dropped: every operation
 *          or mail is answered exactly once at its msg.reply_to, every publish gets
 *          its done; deliveries held by subscribers can still be acknowledged, and
 *          the bus waits for them.
 *       3. The adapter then releases what it holds (joins its threads, closes its
 *          connections and libuv handles) and frees itself,
 *       4. and, last, calls cb(ctx) exactly once, on the port's loop thread, never
 *          from inside close. When cb runs the port pointer is already invalid:
 *          cb may free the memory of whoever owned it.
 *
 * One backend may serve several ports (an SQLite file: users, tasks, outbox; a
 * PostgreSQL pool: tasks, outbox; a MongoDB pool: users, outbox). Each port it hands
 * out through an accessor is closed on its own: steps 1, 2 and 4 concern that port's
 * work only, and step 3 (the backend released) happens with the close of the last
 * port it handed out, before that close's cb. */
#ifndef TMS_CORE_PORT_H
#define TMS_CORE_PORT_H

/* The completion of a port's close: runs once on the port's loop thread, after the
 * adapter (or, for a shared backend, the port) is gone. */
typedef void (*tms_port_closed_fn)(void *ctx);

#endif
