/* JSON into a buffer without a tree (jsonw.h). */
#include "core/jsonw.h"

#include <string.h>

static const char hex[] = "0123456789ABCDEF";

/* 1 when none of the 8 bytes of x needs escaping: no control byte (< 0x20), no '"',
 * no '\\' (bytes >= 0x80, UTF-8, go through as they are). The "has a zero byte" test,
 * exact for the word as a whole. */
static inline int word_clean(uint64_t x)
{
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    uint64_t q = x ^ (ones * '"'), b = x ^ (ones * '\\');
    uint64_t bad = ((x - ones * 0x20) & ~x) | ((q - ones) & ~q) | ((b - ones) & ~b);
    return (bad & highs) == 0;
}

char *tms_jsonw_string(char *p, const char *s, size_t n)
{
    size_t i = 0;
    *p++ = '"';
    /* Text is mostly plain: copy it 8 bytes at a time, escape byte by byte only in a
     * word that needs it (a byte loop was 2 % of a GET; issue 19). */
    while (i < n) {
        size_t end;
        if (n - i >= 8) {
            uint64_t x;
            memcpy(&x, s + i, 8);
            if (word_clean(x)) {
                memcpy(p, &x, 8);
                p += 8;
                i += 8;
                continue;
            }
            end = i + 8;
        } else {
            end = n;
        }
        for (; i < end; i++) {
            unsigned char c = (unsigned char)s[i];
            if (c >= 0x20 && c != '"' && c != '\\') {
                *p++ = (char)c;
                continue;
            }
            *p++ = '\\';
            switch (c) {
            case '"':
            case '\\':
                *p++ = (char)c;
                break;
            case '\b':
                *p++ = 'b';
                break;
            case '\f':
                *p++ = 'f';
                break;
            case '\n':
                *p++ = 'n';
                break;
            case '\r':
                *p++ = 'r';
                break;
            case '\t':
                *p++ = 't';
                break;
            default:
                *p++ = 'u';
                *p++ = '0';
                *p++ = '0';
                *p++ = hex[c >> 4];
                *p++ = hex[c & 15];
                break;
            }
        }
    }
    *p++ = '"';
    return p;
}

char *tms_jsonw_string_or_null(char *p, const char *s)
{
    if (!s)
        return tms_jsonw_lit(p, "null");
    return tms_jsonw_string(p, s, strlen(s));
}

char *tms_jsonw_int(char *p, int64_t v)
{
    char tmp[TMS_JSONW_INT_MAX];
    size_t n = 0;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    if (v < 0)
        *p++ = '-';
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    while (n)
        *p++ = tmp[--n];
    return p;
}

char *tms_jsonw_raw(char *p, const char *s, size_t n)
{
    memcpy(p, s, n);
    return p + n;
}
