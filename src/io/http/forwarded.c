/* The client behind trusted proxies (forwarded.h). */
#include "io/http/forwarded.h"

#include <arpa/inet.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

/* At most this many hops are looked at, from the right: a longer chain was padded by
 * the client, and every hop this far in was a trusted proxy of ours. */
#define MAX_HOPS 32

typedef struct hop {
    char addr[80]; /* "" when the hop is no address */
} hop_t;

/* A hop as an address text without brackets or port ("[2001:db8::1]:443" ->
 * "2001:db8::1", "192.0.2.1:80" -> "192.0.2.1"); "" when it is none. */
static void hop_parse(const char *s, size_t n, hop_t *h)
{
    char text[80];
    unsigned char bin[16];
    while (n && (*s == ' ' || *s == '\t'))
        s++, n--;
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    if (n >= 2 && s[0] == '"' && s[n - 1] == '"')
        s++, n -= 2;
    h->addr[0] = '\0';
    if (!n || n >= sizeof(text))
        return;
    memcpy(text, s, n);
    text[n] = '\0';
    if (text[0] == '[') {
        char *rb = strchr(text, ']');
        if (!rb)
            return;
        *rb = '\0';
        memmove(text, text + 1, strlen(text + 1) + 1);
    } else if (strchr(text, ':') == strrchr(text, ':') && strchr(text, ':')) {
        *strchr(text, ':') = '\0'; /* IPv4 with a port */
    }
    if (inet_pton(AF_INET, text, bin) == 1 || inet_pton(AF_INET6, text, bin) == 1)
        snprintf(h->addr, sizeof(h->addr), "%s", text);
}

/* Appends the hops of one X-Forwarded-For value ("a, b, c") to hops, keeping the
 * rightmost MAX_HOPS. */
static void add_xff(const char *v, hop_t *hops, size_t *n)
{
    while (*v) {
        size_t len = strcspn(v, ",");
        if (*n == MAX_HOPS) {
            memmove(hops, hops + 1, (MAX_HOPS - 1) * sizeof(*hops));
            (*n)--;
        }
        hop_parse(v, len, &hops[(*n)++]);
        v += len;
        if (*v == ',')
            v++;
    }
}

/* Appends the for= of each element of one Forwarded value. */
static void add_forwarded(const char *v, hop_t *hops, size_t *n)
{
    while (*v) {
        size_t elem = strcspn(v, ","); /* quoted commas do not occur in for= values */
        const char *p = v, *end = v + elem;
        bool found = false;
        while (p < end) {
            size_t pair = strcspn(p, ";");
            const char *q = p;
            if (pair > (size_t)(end - p))
                pair = (size_t)(end - p);
            while (q < p + pair && (*q == ' ' || *q == '\t'))
                q++;
            if ((size_t)(p + pair - q) > 4 && strncasecmp(q, "for=", 4) == 0 && !found) {
                if (*n == MAX_HOPS) {
                    memmove(hops, hops + 1, (MAX_HOPS - 1) * sizeof(*hops));
                    (*n)--;
                }
                hop_parse(q + 4, (size_t)(p + pair - q - 4), &hops[(*n)++]);
                found = true;
            }
            p += pair + (p + pair < end);
        }
        v = end + (*end == ',');
    }
}

int tms_http_forwarded_client(const tms_http_request_t *req, const char *peer,
                              const tms_cidr_list_t *trusted, char *out, size_t size)
{
    hop_t hops[MAX_HOPS];
    size_t n = 0;
    bool xff = false;
    const char *client = peer;
    snprintf(out, size, "%s", peer);
    if (!trusted || !trusted->n || !tms_cidr_list_match(trusted, peer))
        return 0;
    for (size_t i = 0; i < req->nheaders; i++) {
        if (strcasecmp(req->headers[i].name, "X-Forwarded-For") == 0) {
            add_xff(req->headers[i].value, hops, &n);
            xff = true;
        }
    }
    for (size_t i = 0; !xff && i < req->nheaders; i++) {
        if (strcasecmp(req->headers[i].name, "Forwarded") == 0)
            add_forwarded(req->headers[i].value, hops, &n);
    }
    /* From the right: each trusted hop speaks for the one to its left. */
    for (size_t i = n; i-- > 0;) {
        if (!hops[i].addr[0])
            break; /* no address: nothing to its left can be believed */
        client = hops[i].addr;
        if (!tms_cidr_list_match(trusted, client))
            break;
    }
    if (client == peer)
        return 0;
    snprintf(out, size, "%s", client);
    return 1;
}
