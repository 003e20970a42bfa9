/* What context.c and tls.c share: the context's fields. */
#ifndef TMS_IO_TLS_INTERNAL_H
#define TMS_IO_TLS_INTERNAL_H

#include <openssl/ssl.h>
#include <pthread.h>
#include <stdint.h>
#include <time.h>

#include "core/metrics.h"
#include "io/tls/tls.h"

typedef struct ticket_key {
    unsigned char name[16], aes[32], hmac[32];
} ticket_key_t;

struct tms_tls_ctx {
    pthread_mutex_t lock;  /* ssl and the ticket keys: taken per new connection, per ticket */
    SSL_CTX *ssl;          /* current; every SSL holds its own reference */
    tms_tls_options_t opt; /* strings are ours */
    char label[16];
    unsigned char alpn_wire[16]; /* the ALPN protocol as a length-prefixed list */
    size_t alpn_len;
    bool alpn_http1;                 /* the http/1.1 listener also takes http/1.0 */
    ticket_key_t keys[2];            /* [0] encrypts; [1], the one before, still decrypts */
    time_t keys_at;                  /* when keys[0] was made */
    tms_counter_t *handshakes[2][2]; /* [TLS 1.3][resumed] */
    tms_counter_t *failed, *timeouts;
};

#endif
