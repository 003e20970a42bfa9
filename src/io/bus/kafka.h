/* The Kafka event bus: the event bus port (core/event_bus.h) on librdkafka,
 * driven by the loop. One idempotent producer (acks=all) publishes; its
 * delivery reports arrive on the main queue, whose io-event pipe sits on a
 * uv_poll, so publish completions run on the loop and nothing polls librdkafka
 * with a timeout there. Each subscribe() is one consumer in its own group, on
 * the same kind of pipe.
 *
 * Consumers: offsets are stored (and auto-committed) only up to the first
 * delivery of a partition its consumer has not acknowledged, so a commit never
 * covers an unhandled event. A permanent failure redelivers the event after a
 * back-off; after dlq_after attempts it goes to `<topic>.dlq` (headers tms.topic,
 * tms.partition, tms.offset, tms.attempts, tms.reason, tms.group) and counts as
 * handled, so one poison message delays only itself. A transient failure pauses
 * the consumer's partitions until a probe is handled (core/event_bus.h). A revoked partition's held
 * deliveries are orphaned: their acks are ignored and the new owner redelivers from the committed
 * offset, which the handlers' inbox (dedup by event_id) absorbs.
 *
 * Single loop: every call and completion runs on the loop given to new. */
#ifndef TMS_IO_KAFKA_H
#define TMS_IO_KAFKA_H

#include <stddef.h>
#include <uv.h>

#include "core/event_bus.h"

typedef struct tms_kafka_options {
    const char *brokers;       /* bootstrap servers, "host:port,..." */
    const char *client_id;     /* NULL: "tms" */
    const char *const *topics; /* NULL-terminated; created (with .dlq twins) at start */
    int partitions;            /* of created topics; 0: 3 */
    int replication;           /* of created topics; 0: 1 */
    int dlq_after;             /* attempts before the dead-letter topic; 0: 5 */
    int retry_ms;              /* first redelivery back-off, doubled per attempt; 0: 200 */
    int publish_timeout_ms;    /* a publish not acknowledged by then fails; 0: 10000
                                */
    int max_inflight;          /* held deliveries per consumer before it takes no more (its
                                * partitions pause after a second of that); 0: 64 */
    int max_poll_interval_ms;  /* librdkafka's max.poll.interval.ms (tests); 0: 300000 */
    const char *ns; /* namespace: topics "<ns>.<topic>", groups "<group>.<ns>"; NULL/"": none */
    /* TLS to the brokers, librdkafka's own: security.protocol ("ssl"; NULL/"":
     * plaintext), ssl.ca.location, ssl.certificate.location, ssl.key.location (NULL/"":
     * librdkafka's defaults). Set on the producer and every consumer. */
    const char *security_protocol, *tls_ca, *tls_cert, *tls_key;
} tms_kafka_options_t;

typedef struct tms_kafka_bus tms_kafka_bus_t;

/** Create the bus on loop: producer, topic creation (asynchronous; consumers
 * join their groups once it has answered). Returns NULL with err filled when
 * librdkafka refuses the configuration. */
tms_kafka_bus_t *tms_kafka_bus_new(uv_loop_t *loop, const tms_kafka_options_t *opt, char *err,
                                   size_t err_len);

/** The event bus port of bus (the same pointer on every call). Its close
 * (core/port.h): publish and subscribe refused; consumers take no new events,
 * finish what they hold (dead letters being produced included; redeliveries not yet
 * made are left, uncommitted, to the next start), then leave their groups,
 * committing what was handled; publishes already made get their done
 * (within publish_timeout_ms); then the bus is freed and cb runs. */
tms_event_bus_t *tms_kafka_bus_port(tms_kafka_bus_t *bus);

/** 1 when a broker answered recently (a delivery, a fetch or metadata), else 0.
 * Any thread (read by /readyz on any worker). */
int tms_kafka_bus_reachable(tms_kafka_bus_t *bus);

#endif
