/* libFuzzer: the HTTP/1.1 fuzz target (http_fuzz.c) through the TLS layer. The server
 * of fuzz_server.h listens with TLS (io/tls on a throwaway certificate made at start);
 * each input is sent on a fresh connection after a real handshake, as application
 * data, followed by close_notify, and the decrypted answers are read to the end (a 500
 * is a finding). An input starting with 0x16 (a TLS handshake record) is sent as it is
 * instead, so the server's handshake meets arbitrary records too. "$T" is replaced by a
 * valid bearer token as in http_fuzz.c. */
#include "fuzz_server.h"

#include "../unit/tls_certs.h"

static char tls_dir[] = "/tmp/tms-http-tls-fuzz.XXXXXX";

static int remove_tls_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)remove(path);
    return 0;
}

static void remove_tls_dir(void)
{
    nftw(tls_dir, remove_tls_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void make_tls(void)
{
    static char cert[128], key[128];
    char ca_file[128], err[1200];
    test_cert_t ca, server;
    if (!mkdtemp(tls_dir))
        abort();
    atexit(remove_tls_dir);
    ca = certs_make("tms-fuzz-ca", NULL, -60, 86400, NULL);
    server = certs_make("localhost", &ca, -60, 86400, "DNS:localhost");
    snprintf(cert, sizeof cert, "%s/server.pem", tls_dir);
    snprintf(key, sizeof key, "%s/server.key", tls_dir);
    snprintf(ca_file, sizeof ca_file, "%s/ca.pem", tls_dir);
    certs_write_cert(cert, &server, NULL);
    certs_write_key(key, &server, 0600);
    certs_write_cert(ca_file, &ca, NULL);
    certs_free(&ca);
    certs_free(&server);
    fuzz_tls_cert = cert; /* the server reads them at its start (fuzz_server.h) */
    fuzz_tls_key = key;
    fuzz_tls_client = tms_tls_ctx_new(
        &(tms_tls_options_t){.section = "peers", .client = true, .ca = ca_file, .alpn = "http/1.1"},
        err, sizeof err);
    if (!fuzz_tls_client) {
        fprintf(stderr, "http_tls_fuzz: %s\n", err);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *bytes;
    size_t n = 0;
    if (size > 65536)
        return 0;
    if (!fuzz_tls_client)
        make_tls();
    fuzz_server_ready(); /* a token, over TLS */
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
    fuzz_raw_tls = size > 0 && data[0] == 0x16;
    fuzz_server_send(bytes, n);
    fuzz_raw_tls = 0;
    free(bytes);
    return 0;
}
