#include "core/objectid.h"

#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"

static unsigned char process_random[5];
static _Atomic uint32_t counter;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void init_random(void)
{
    if (sodium_init() < 0)
        abort();
    randombytes_buf(process_random, sizeof(process_random));
    atomic_store(&counter, randombytes_random());
}

void tms_objectid_new(char out[25])
{
    unsigned char b[12];
    uint32_t secs = (uint32_t)(tms_now_ms() / 1000);
    uint32_t c;
    pthread_once(&once, init_random);
    c = atomic_fetch_add(&counter, 1);
    b[0] = (unsigned char)(secs >> 24);
    b[1] = (unsigned char)(secs >> 16);
    b[2] = (unsigned char)(secs >> 8);
    b[3] = (unsigned char)secs;
    memcpy(b + 4, process_random, 5);
    b[9] = (unsigned char)(c >> 16);
    b[10] = (unsigned char)(c >> 8);
    b[11] = (unsigned char)c;
    for (int i = 0; i < 12; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
}

int tms_objectid_valid(const char *s)
{
    size_t i;
    for (i = 0; s[i]; i++) {
        if (i >= 24 || !((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    }
    return i == 24;
}
