#include "core/text.h"

#include <ctype.h>
#include <string.h>

#include "core/user_store.h"

char *tms_text_trim(char *s)
{
    size_t start = 0, len = strlen(s);
    while (start < len && isspace((unsigned char)s[start]))
        start++;
    while (len > start && isspace((unsigned char)s[len - 1]))
        len--;
    memmove(s, s + start, len - start);
    s[len - start] = '\0';
    return s;
}

long tms_utf8_length(const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    long count = 0;
    size_t i = 0;
    while (i < len) {
        unsigned char c = s[i];
        uint32_t cp;
        size_t n;
        if (c == 0)
            return -1;
        if (c < 0x80) {
            i++;
            count++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            n = 1;
            cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            n = 2;
            cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            n = 3;
            cp = c & 0x07;
        } else {
            return -1;
        }
        for (size_t k = 1; k <= n; k++) {
            if (i + k >= len || (s[i + k] & 0xc0) != 0x80)
                return -1;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
            cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return -1;
        i += n + 1;
        count++;
    }
    return count;
}

int64_t tms_parse_id(const char *s, size_t len)
{
    int64_t v = 0;
    if (len == 0 || len > 19 || s[0] == '0')
        return 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        if (v > (INT64_MAX - (s[i] - '0')) / 10)
            return 0;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

char *tms_text_copy(char *dst, size_t size, const char *src)
{
    size_t n = strnlen(src, size - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
    return dst;
}

int tms_email_normalize(char *email, const char **why)
{
    size_t len, start = 0, at = 0, ats = 0;
    len = strlen(email);
    while (start < len && isspace((unsigned char)email[start]))
        start++;
    while (len > start && isspace((unsigned char)email[len - 1]))
        len--;
    memmove(email, email + start, len - start);
    len -= start;
    email[len] = '\0';
    if (len < TMS_EMAIL_MIN || len > TMS_EMAIL_MAX) {
        *why = "email must be 3 to 254 characters";
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)email[i];
        if (c <= 0x20 || c == 0x7f) {
            *why = "email must not contain spaces or control characters";
            return -1;
        }
        if (c == '@') {
            ats++;
            at = i;
        }
        email[i] = (char)tolower(c);
    }
    if (ats != 1 || at == 0 || at == len - 1) {
        *why = "email must contain exactly one @ between a name and a domain";
        return -1;
    }
    return 0;
}
