/* libFuzzer: a raw HTTP/1.1 byte stream through the real server (fuzz_server.h):
 * llhttp and http1.c, the REST adapter (routes, JSON bodies, query strings, headers),
 * the gateway, auth and task actors, on an in-memory SQLite store. Each input is
 * written on a fresh TCP connection, the write side is then shut down and the
 * responses are read to the end. "$T" in an input is replaced by a valid bearer
 * token, so authenticated routes are reached. A 500 answer, a sanitizer report or a
 * hang (libFuzzer -timeout) is a finding. */
#include "fuzz_server.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *bytes;
    size_t n = 0;
    if (size > 65536)
        return 0;
    fuzz_server_ready();
    /* "$T" -> the token; at most 4 of them. */
    bytes = malloc(size + 4 * strlen(token) + 1);
    for (size_t i = 0, subs = 0; i < size; i++) {
        if (data[i] == '$' && i + 1 < size && data[i + 1] == 'T' && subs++ < 4) {
            memcpy(bytes + n, token, strlen(token));
            n += strlen(token);
            i++;
        } else {
            bytes[n++] = (char)data[i];
        }
    }
    fuzz_server_send(bytes, n);
    free(bytes);
    return 0;
}
