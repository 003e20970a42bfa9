/* CIDR lists (cidr.h). */
#include "core/cidr.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "core/status.h"

#define SEPARATORS ", \t\r\n"

static bool prefix_equal(const unsigned char *a, const unsigned char *b, unsigned bits)
{
    unsigned whole = bits / 8, rest = bits % 8;
    if (memcmp(a, b, whole) != 0)
        return false;
    if (!rest)
        return true;
    unsigned char mask = (unsigned char)(0xffu << (8 - rest));
    return (a[whole] & mask) == (b[whole] & mask);
}

/* One entry: "addr" or "addr/bits". 0, or -1 with err set. */
static int parse_one(const char *s, size_t len, tms_cidr_t *c, char *err, size_t err_len)
{
    char text[INET6_ADDRSTRLEN + 8], *slash, *end;
    unsigned max;
    long bits;
    if (len >= sizeof(text))
        goto bad;
    memcpy(text, s, len);
    text[len] = '\0';
    slash = strchr(text, '/');
    if (slash)
        *slash = '\0';
    memset(c, 0, sizeof(*c));
    if (inet_pton(AF_INET, text, c->addr) == 1) {
        c->family = AF_INET;
        max = 32;
    } else if (inet_pton(AF_INET6, text, c->addr) == 1) {
        c->family = AF_INET6;
        max = 128;
    } else {
        goto bad;
    }
    c->bits = max;
    if (slash) {
        bits = strtol(slash + 1, &end, 10);
        if (!slash[1] || *end || bits < 0 || bits > (long)max) {
            snprintf(err, err_len, "\"%.*s\": the prefix length must be 0 to %u", (int)len, s, max);
            return -1;
        }
        c->bits = (unsigned)bits;
    }
    /* 10.0.0.1/8 is most likely a typo for a host or for 10.0.0.0/8: say which. */
    {
        unsigned char masked[16];
        memcpy(masked, c->addr, sizeof(masked));
        for (unsigned b = c->bits; b < max; b++)
            masked[b / 8] &= (unsigned char)~(0x80u >> (b % 8));
        if (memcmp(masked, c->addr, max / 8) != 0) {
            char net[INET6_ADDRSTRLEN];
            inet_ntop(c->family, masked, net, sizeof(net));
            snprintf(err, err_len, "\"%.*s\" has bits set beyond its /%u prefix (%s/%u?)", (int)len,
                     s, c->bits, net, c->bits);
            return -1;
        }
    }
    return 0;
bad:
    snprintf(err, err_len, "\"%.*s\" is not an IPv4 or IPv6 address or CIDR range",
             (int)(len > 64 ? 64 : len), s);
    return -1;
}

int tms_cidr_list_parse(const char *text, tms_cidr_list_t *out, char *err, size_t err_len)
{
    const char *p = text ? text : "";
    memset(out, 0, sizeof(*out));
    while (*(p += strspn(p, SEPARATORS))) {
        size_t len = strcspn(p, SEPARATORS);
        if (out->n == TMS_CIDR_MAX) {
            snprintf(err, err_len, "more than %d ranges", TMS_CIDR_MAX);
            return -TMS_EINVAL;
        }
        if (parse_one(p, len, &out->v[out->n], err, err_len) != 0)
            return -TMS_EINVAL;
        out->n++;
        p += len;
    }
    return 0;
}

bool tms_cidr_list_match(const tms_cidr_list_t *l, const char *ip)
{
    unsigned char a[16];
    int family;
    if (!l || !l->n || !ip)
        return false;
    if (inet_pton(AF_INET, ip, a) == 1) {
        family = AF_INET;
    } else if (inet_pton(AF_INET6, ip, a) == 1) {
        family = AF_INET6;
        /* ::ffff:a.b.c.d is an IPv4 client on a dual-stack socket. */
        if (memcmp(a, "\0\0\0\0\0\0\0\0\0\0\xff\xff", 12) == 0) {
            memmove(a, a + 12, 4);
            family = AF_INET;
        }
    } else {
        return false;
    }
    for (size_t i = 0; i < l->n; i++) {
        if (l->v[i].family == family && prefix_equal(l->v[i].addr, a, l->v[i].bits))
            return true;
    }
    return false;
}
