/* JSON into a buffer without a tree (jsonw.h). */
#include "core/jsonw.h"

#include <string.h>

static const char hex[] = "0123456789ABCDEF";

char *tms_jsonw_string(char *p, const char *s, size_t n)
{
    *p++ = '"';
    for (size_t i = 0; i < n; i++) {
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
