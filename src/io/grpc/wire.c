#include "io/grpc/wire.h"

#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/status.h"

int tms_grpc_frame_parse(const uint8_t *buf, size_t len, size_t max_len, tms_grpc_frame_t *out)
{
    uint32_t n;
    if (len < TMS_GRPC_FRAME_HEADER)
        return 0;
    if (buf[0] > 1)
        return -TMS_EINVAL;
    n = (uint32_t)buf[1] << 24 | (uint32_t)buf[2] << 16 | (uint32_t)buf[3] << 8 | buf[4];
    if (n > max_len)
        return -TMS_ERANGE;
    if (len - TMS_GRPC_FRAME_HEADER < n)
        return 0;
    out->compressed = buf[0] == 1;
    out->data = buf + TMS_GRPC_FRAME_HEADER;
    out->len = n;
    out->consumed = TMS_GRPC_FRAME_HEADER + (size_t)n;
    return 1;
}

void tms_grpc_frame_header(uint8_t out[TMS_GRPC_FRAME_HEADER], uint32_t len)
{
    out[0] = 0;
    out[1] = (uint8_t)(len >> 24);
    out[2] = (uint8_t)(len >> 16);
    out[3] = (uint8_t)(len >> 8);
    out[4] = (uint8_t)len;
}

int tms_grpc_timeout_parse(const char *s, uint64_t *ms)
{
    uint64_t v = 0, ns_per_unit;
    size_t n = 0;
    if (!s)
        return -TMS_EINVAL;
    for (; s[n] >= '0' && s[n] <= '9'; n++) {
        if (n == 8)
            return -TMS_EINVAL; /* at most 8 digits: no overflow below */
        v = v * 10 + (uint64_t)(s[n] - '0');
    }
    if (n == 0 || s[n] == '\0' || s[n + 1] != '\0')
        return -TMS_EINVAL;
    switch (s[n]) {
    case 'H':
        *ms = v * 3600000;
        return 0;
    case 'M':
        *ms = v * 60000;
        return 0;
    case 'S':
        *ms = v * 1000;
        return 0;
    case 'm':
        *ms = v;
        return 0;
    case 'u':
        ns_per_unit = 1000;
        break;
    case 'n':
        ns_per_unit = 1;
        break;
    default:
        return -TMS_EINVAL;
    }
    *ms = (v * ns_per_unit + 999999) / 1000000;
    return 0;
}

char *tms_grpc_timeout_format(uint64_t ms, char out[16])
{
    static const struct {
        uint64_t ms;
        char unit;
    } units[] = {{1, 'm'}, {1000, 'S'}, {60000, 'M'}, {3600000, 'H'}};
    size_t i = 0;
    uint64_t v = ms;
    /* 8 digits at most (the spec's TimeoutValue); 99999999 H is about 11k years. */
    while (i + 1 < sizeof(units) / sizeof(units[0]) && v > 99999999) {
        i++;
        v = ms / units[i].ms + (ms % units[i].ms != 0);
    }
    if (v > 99999999)
        v = 99999999;
    snprintf(out, 16, "%llu%c", (unsigned long long)v, units[i].unit);
    return out;
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

char *tms_grpc_percent_decode(const char *s, size_t len)
{
    char *out = tms_malloc(len + 1), *o = out;
    for (size_t i = 0; i < len; i++) {
        int hi, lo;
        if (s[i] == '%' && i + 2 < len && (hi = hexval(s[i + 1])) >= 0 &&
            (lo = hexval(s[i + 2])) >= 0) {
            *o++ = (char)(hi << 4 | lo);
            i += 2;
        } else {
            *o++ = s[i];
        }
    }
    *o = '\0';
    return out;
}

char *tms_grpc_percent_encode(const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = strlen(s);
    char *out = tms_malloc(3 * n + 1), *o = out;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p < 0x20 || *p > 0x7e || *p == '%') {
            *o++ = '%';
            *o++ = hex[*p >> 4];
            *o++ = hex[*p & 15];
        } else {
            *o++ = (char)*p;
        }
    }
    *o = '\0';
    return out;
}

void tms_pb_reader_init(tms_pb_reader_t *r, const uint8_t *buf, size_t len)
{
    r->p = buf;
    r->end = buf + len;
}

static int read_varint(tms_pb_reader_t *r, uint64_t *v)
{
    uint64_t x = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (r->p == r->end)
            return -TMS_EINVAL;
        uint8_t b = *r->p++;
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = x;
            return 0;
        }
    }
    return -TMS_EINVAL;
}

int tms_pb_next(tms_pb_reader_t *r, tms_pb_field_t *f)
{
    uint64_t key, n;
    if (r->p == r->end)
        return 0;
    if (read_varint(r, &key) != 0 || (key >> 3) == 0 || (key >> 3) > 0x1fffffff)
        return -TMS_EINVAL;
    memset(f, 0, sizeof(*f));
    f->number = (uint32_t)(key >> 3);
    f->wire_type = (int)(key & 7);
    switch (f->wire_type) {
    case 0:
        return read_varint(r, &f->varint) == 0 ? 1 : -TMS_EINVAL;
    case 1:
    case 5:
        n = f->wire_type == 1 ? 8 : 4;
        if ((size_t)(r->end - r->p) < n)
            return -TMS_EINVAL;
        for (uint64_t i = 0; i < n; i++)
            f->varint |= (uint64_t)r->p[i] << (8 * i);
        r->p += n;
        return 1;
    case 2:
        if (read_varint(r, &n) != 0 || n > (uint64_t)(r->end - r->p))
            return -TMS_EINVAL;
        f->data = r->p;
        f->len = (size_t)n;
        r->p += n;
        return 1;
    default:
        return -TMS_EINVAL;
    }
}
