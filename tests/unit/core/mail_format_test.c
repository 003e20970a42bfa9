/* tms_mail_render: headers parse back, RFC 2047 subjects decode back, CRLF only,
 * line limits, header injection refused, quoted-printable bodies decode back. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/alloc.h"
#include "core/mail_format.h"
#include "test.h"

#define EVENT_ID "0f8fad5b-d9cb-469f-a165-70867728950e"
#define FROM "tms@example.org"
#define DOMAIN "tms.example.org"

static tms_mail_t *make_mail(const char *to, const char *subject, const char *text,
                             const char *html)
{
    tms_mail_t *m = tms_mail_new();
    snprintf(m->to, sizeof(m->to), "%s", to);
    snprintf(m->subject, sizeof(m->subject), "%s", subject);
    snprintf(m->event_id, sizeof(m->event_id), "%s", EVENT_ID);
    m->text = text ? tms_strdup(text) : NULL;
    m->html = html ? tms_strdup(html) : NULL;
    m->date_ms = 1795874400000LL; /* 2026-11-28T14:00:00Z, a Saturday */
    return m;
}

/* Every CR is followed by LF and every LF preceded by CR; returns the longest line
 * (without CRLF). */
static size_t check_crlf(const char *s, size_t len, bool *ok)
{
    size_t longest = 0, col = 0;
    *ok = true;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '\r') {
            if (i + 1 >= len || s[i + 1] != '\n')
                *ok = false;
        } else if (s[i] == '\n') {
            if (i == 0 || s[i - 1] != '\r')
                *ok = false;
            col = 0;
        } else if (++col > longest) {
            longest = col;
        }
    }
    return longest;
}

/* The unfolded value of header `name` in the header block (before the first empty
 * line), heap, or NULL. */
static char *header(const char *msg, const char *name)
{
    const char *end = strstr(msg, "\r\n\r\n");
    size_t nlen = strlen(name);
    const char *p = msg;
    if (!end)
        return NULL;
    while (p < end) {
        const char *eol = strstr(p, "\r\n");
        if (strncasecmp(p, name, nlen) == 0 && p[nlen] == ':') {
            char *out = tms_malloc((size_t)(end - p) + 1);
            size_t n = 0;
            const char *v = p + nlen + 1;
            while (*v == ' ')
                v++;
            /* Unfold: a CRLF followed by white space is removed. */
            for (;;) {
                for (; v < eol; v++)
                    out[n++] = *v;
                if (eol < end && (eol[2] == ' ' || eol[2] == '\t')) {
                    v = eol + 2;
                    eol = strstr(v, "\r\n");
                } else {
                    break;
                }
            }
            out[n] = '\0';
            return out;
        }
        p = eol + 2;
    }
    return NULL;
}

static int b64val(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Decode an unfolded Subject made of "=?UTF-8?B?...?=" words separated by white
 * space (which RFC 2047 drops between adjacent encoded words). */
static char *decode_subject(const char *v, int *words)
{
    char *out = tms_malloc(strlen(v) + 1);
    size_t n = 0;
    *words = 0;
    while (*v) {
        while (*v == ' ')
            v++;
        if (!*v)
            break;
        if (strncmp(v, "=?UTF-8?B?", 10) != 0) {
            free(out);
            return NULL;
        }
        v += 10;
        uint32_t acc = 0;
        int bits = 0;
        for (; *v && *v != '?'; v++) {
            if (*v == '=')
                continue;
            int x = b64val(*v);
            if (x < 0) {
                free(out);
                return NULL;
            }
            acc = (acc << 6) | (uint32_t)x;
            bits += 6;
            if (bits >= 8) {
                bits -= 8;
                out[n++] = (char)((acc >> bits) & 0xff);
            }
        }
        if (strncmp(v, "?=", 2) != 0) {
            free(out);
            return NULL;
        }
        v += 2;
        (*words)++;
    }
    out[n] = '\0';
    return out;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Decode quoted-printable text of [s, e); lowercase hex is refused (we emit upper). */
static char *qp_decode(const char *s, const char *e)
{
    char *out = tms_malloc((size_t)(e - s) + 1);
    size_t n = 0;
    while (s < e) {
        if (*s == '=') {
            if (s + 2 < e && s[1] == '\r' && s[2] == '\n') {
                s += 3;
                continue;
            }
            int hi = s + 1 < e ? hexval(s[1]) : -1, lo = s + 2 < e ? hexval(s[2]) : -1;
            if (hi < 0 || lo < 0) {
                free(out);
                return NULL;
            }
            out[n++] = (char)(hi * 16 + lo);
            s += 3;
        } else {
            out[n++] = *s++;
        }
    }
    out[n] = '\0';
    return out;
}

/* The body of the part whose headers contain `ctype`, decoded; the part content ends
 * at the CRLF before the next delimiter, or at the end of a single-part message. */
static char *part(const char *msg, const char *ctype, const char *boundary)
{
    char delim[128];
    const char *p = strstr(msg, ctype), *body, *end;
    if (!p)
        return NULL;
    body = strstr(p, "\r\n\r\n");
    if (!body)
        return NULL;
    body += 4;
    if (boundary) {
        snprintf(delim, sizeof(delim), "\r\n--%s", boundary);
        end = strstr(body, delim);
        if (!end)
            return NULL;
    } else {
        end = body + strlen(body);
    }
    return qp_decode(body, end);
}

static void test_headers_and_parts(void)
{
    tms_mail_t *m = make_mail("bob@example.com", "New Task Assigned",
                              "Hello,\n\nTask 42: Write = docs\n", "<p>Task <b>42</b></p>\n");
    size_t len = 0;
    char *out = tms_mail_render(m, FROM, DOMAIN, &len);
    bool crlf;
    CHECK(out != NULL);
    if (!out) {
        tms_mail_free(&m);
        return;
    }
    CHECK_EQ_INT(len, strlen(out));
    CHECK(check_crlf(out, len, &crlf) <= 78);
    CHECK(crlf);
    char *v;
    CHECK_EQ_STR(v = header(out, "Date"), "Sat, 28 Nov 2026 14:00:00 +0000");
    free(v);
    CHECK_EQ_STR(v = header(out, "From"), FROM);
    free(v);
    CHECK_EQ_STR(v = header(out, "To"), "bob@example.com");
    free(v);
    CHECK_EQ_STR(v = header(out, "Subject"), "New Task Assigned");
    free(v);
    CHECK_EQ_STR(v = header(out, "Message-ID"), "<" EVENT_ID "@" DOMAIN ">");
    free(v);
    CHECK_EQ_STR(v = header(out, "MIME-Version"), "1.0");
    free(v);
    CHECK_EQ_STR(v = header(out, "Content-Type"),
                 "multipart/alternative; boundary=\"=_tms_" EVENT_ID "\"");
    free(v);
    CHECK(header(out, "Bcc") == NULL);

    /* Three delimiters, the last one closing. */
    CHECK(strstr(out, "\r\n--=_tms_" EVENT_ID "\r\nContent-Type: text/plain; charset=UTF-8\r\n"
                      "Content-Transfer-Encoding: quoted-printable\r\n\r\n") != NULL);
    CHECK(strstr(out, "\r\n--=_tms_" EVENT_ID "\r\nContent-Type: text/html; charset=UTF-8\r\n"
                      "Content-Transfer-Encoding: quoted-printable\r\n\r\n") != NULL);
    CHECK(strstr(out, "\r\n--=_tms_" EVENT_ID "--\r\n") != NULL);
    CHECK_EQ_INT(len >= 2 && out[len - 2] == '\r' && out[len - 1] == '\n', 1);
    CHECK(strstr(out, "Write =3D docs") != NULL);

    char *text = part(out, "text/plain", "=_tms_" EVENT_ID);
    char *html = part(out, "text/html", "=_tms_" EVENT_ID);
    CHECK_EQ_STR(text, "Hello,\r\n\r\nTask 42: Write = docs\r\n");
    CHECK_EQ_STR(html, "<p>Task <b>42</b></p>\r\n");
    free(text);
    free(html);
    free(out);
    tms_mail_free(&m);
}

static void test_text_only(void)
{
    tms_mail_t *m = make_mail("bob@example.com", "Hi", "no html", NULL);
    char *out = tms_mail_render(m, FROM, DOMAIN, NULL);
    CHECK(out != NULL);
    if (out) {
        char *v = header(out, "Content-Type");
        CHECK_EQ_STR(v, "text/plain; charset=UTF-8");
        free(v);
        CHECK(strstr(out, "multipart") == NULL);
        v = part(out, "text/plain", NULL);
        CHECK_EQ_STR(v, "no html\r\n");
        free(v);
    }
    free(out);
    tms_mail_free(&m);
}

static void test_utf8_subject(void)
{
    /* Long enough to need several encoded words; multi-byte characters everywhere so
     * a word boundary inside a character would show. */
    const char *subject = "Neue Aufgabe für Jürgen: Überprüfung der Größenänderung 🚀 "
                          "Ελληνικά και 日本語のテキスト — fertig";
    tms_mail_t *m = make_mail("jurgen@example.de", subject, "x", NULL);
    size_t len;
    bool crlf;
    char *out = tms_mail_render(m, FROM, DOMAIN, &len);
    CHECK(out != NULL);
    if (out) {
        int words = 0;
        CHECK(check_crlf(out, len, &crlf) <= 78);
        CHECK(crlf);
        char *v = header(out, "Subject");
        CHECK(v != NULL);
        char *dec = v ? decode_subject(v, &words) : NULL;
        CHECK_EQ_STR(dec, subject);
        CHECK(words > 1);
        free(dec);
        free(v);
        /* Each encoded word is whole UTF-8: decode each on its own. */
        const char *p = strstr(out, "Subject:");
        const char *q = p;
        while ((q = strstr(q, "=?UTF-8?B?")) != NULL && q < strstr(p, "Message-ID:")) {
            char one[128];
            const char *e = strstr(q, "?=");
            int w;
            snprintf(one, sizeof(one), "%.*s", (int)(e + 2 - q), q);
            CHECK(strlen(one) <= 75);
            char *d = decode_subject(one, &w);
            CHECK(d != NULL);
            /* No partial sequence at either end of the word. */
            if (d && d[0])
                CHECK(((unsigned char)d[0] & 0xc0) != 0x80);
            free(d);
            q = e;
        }
    }
    free(out);
    tms_mail_free(&m);

    /* An ASCII subject that looks like an encoded word is encoded itself. */
    m = make_mail("a@b.c", "=?UTF-8?B?SGk=?=", "x", NULL);
    out = tms_mail_render(m, FROM, DOMAIN, NULL);
    CHECK(out != NULL);
    if (out) {
        int words;
        char *v = header(out, "Subject"), *dec = v ? decode_subject(v, &words) : NULL;
        CHECK_EQ_STR(dec, "=?UTF-8?B?SGk=?=");
        free(dec);
        free(v);
    }
    free(out);
    tms_mail_free(&m);
}

static void expect_null(const char *to, const char *subject, const char *from, const char *domain,
                        const char *event_id)
{
    tms_mail_t *m = make_mail(to, subject, "body", "<p>body</p>");
    if (event_id)
        snprintf(m->event_id, sizeof(m->event_id), "%s", event_id);
    char *out = tms_mail_render(m, from, domain, NULL);
    CHECK(out == NULL);
    if (out)
        fprintf(stderr, "  rendered unexpectedly: to=%s subject=%s from=%s\n", to, subject, from);
    free(out);
    tms_mail_free(&m);
}

static void test_injection(void)
{
    expect_null("bob@example.com\r\nBcc: x@evil.com", "Hi", FROM, DOMAIN, NULL);
    expect_null("bob@example.com\nBcc: x@evil.com", "Hi", FROM, DOMAIN, NULL);
    expect_null("bob@example.com", "Hi\r\nBcc: x@evil.com", FROM, DOMAIN, NULL);
    expect_null("bob@example.com", "Hi\nthere", FROM, DOMAIN, NULL);
    expect_null("bob@example.com", "Hi\tthere", FROM, DOMAIN, NULL);
    expect_null("bob@example.com", "Hi\x7f", FROM, DOMAIN, NULL);
    expect_null("bob@example.com", "Hi \xc2\x85 there", FROM, DOMAIN, NULL); /* U+0085 NEL */
    expect_null("bob@example.com", "bad \xff utf8", FROM, DOMAIN, NULL);
    expect_null("bob@example.com", "Hi", "tms@example.org, x@evil.com", DOMAIN, NULL);
    expect_null("bob@example.com", "Hi", "TMS <tms@example.org>", DOMAIN, NULL);
    expect_null("bob@example.com", "Hi", "", DOMAIN, NULL);
    expect_null("bob @example.com", "Hi", FROM, DOMAIN, NULL);
    expect_null("bob@ex@ample.com", "Hi", FROM, DOMAIN, NULL);
    expect_null("bobexample.com", "Hi", FROM, DOMAIN, NULL);
    expect_null("@example.com", "Hi", FROM, DOMAIN, NULL);
    expect_null("bob@", "Hi", FROM, DOMAIN, NULL);
    expect_null("<bob@example.com>", "Hi", FROM, DOMAIN, NULL);
    expect_null("bob@example.com;x@y.z", "Hi", FROM, DOMAIN, NULL);
    expect_null("\"bob\"@example.com", "Hi", FROM, DOMAIN, NULL);
    expect_null("b\xc3\xb6@example.com", "Hi", FROM, DOMAIN, NULL);
    expect_null("bob@example.com", "Hi", FROM, "tms.example.org>\r\nBcc: x@y", NULL);
    expect_null("bob@example.com", "Hi", FROM, "", NULL);
    expect_null("bob@example.com", "Hi", FROM, DOMAIN, "abc>\r\nX: y");
    expect_null("bob@example.com", "Hi", FROM, DOMAIN, "");
    {
        tms_mail_t *m = make_mail("bob@example.com", "Hi", "x", NULL);
        CHECK(tms_mail_render(m, NULL, DOMAIN, NULL) == NULL);
        CHECK(tms_mail_render(m, FROM, NULL, NULL) == NULL);
        tms_mail_free(&m);
    }
}

static void test_quoted_printable(void)
{
    char longline[301];
    memset(longline, 'x', 300);
    longline[300] = '\0';
    for (int i = 0; i < 300; i += 7)
        longline[i] = '=';
    char *text = tms_malloc(1024);
    snprintf(text, 1024,
             "equals = sign\ncaf\xc3\xa9 \xe2\x82\xac\rtrailing space \r\n"
             "tab\t\n%s\nend",
             longline);
    tms_mail_t *m = make_mail("bob@example.com", "QP", text, "\xc3\xa9t\xc3\xa9\r\n\r\n");
    size_t len;
    bool crlf;
    char *out = tms_mail_render(m, FROM, DOMAIN, &len);
    CHECK(out != NULL);
    if (out) {
        const char *body = strstr(out, "\r\n\r\n") + 4;
        /* Body lines stay within 76 characters, the whole message within 998. */
        CHECK(check_crlf(body, strlen(body), &crlf) <= 76);
        CHECK(crlf);
        CHECK(strstr(body, "equals =3D sign\r\n") != NULL);
        CHECK(strstr(body, "caf=C3=A9 =E2=82=AC\r\n") != NULL);
        CHECK(strstr(body, "trailing space=20\r\n") != NULL);
        CHECK(strstr(body, "tab=09\r\n") != NULL);
        CHECK(strstr(body, "=\r\n") != NULL); /* soft breaks in the long line */
        char expect[1024];
        snprintf(expect, sizeof(expect),
                 "equals = sign\r\ncaf\xc3\xa9 \xe2\x82\xac\r\ntrailing space \r\n"
                 "tab\t\r\n%s\r\nend",
                 longline);
        char *dec = part(out, "text/plain", "=_tms_" EVENT_ID);
        CHECK_EQ_STR(dec, expect);
        free(dec);
        dec = part(out, "text/html", "=_tms_" EVENT_ID);
        CHECK_EQ_STR(dec, "\xc3\xa9t\xc3\xa9\r\n\r\n");
        free(dec);
        /* Nothing in a QP body can look like the boundary. */
        CHECK(strstr(body, "--=_tms_") != NULL);
    }
    free(out);
    free(text);
    tms_mail_free(&m);
}

static void test_no_line_over_998(void)
{
    /* A 100 KiB single line in both bodies and a maximal To address. */
    size_t n = 100 * 1024;
    char *big = tms_malloc(n + 1);
    for (size_t i = 0; i < n; i++)
        big[i] = (char)(i % 3 == 0 ? 0xc3 : i % 3 == 1 ? 0xa9 : 'a');
    big[n] = '\0';
    char to[TMS_EMAIL_MAX + 1];
    memset(to, 'a', TMS_EMAIL_MAX);
    to[TMS_EMAIL_MAX] = '\0';
    to[100] = '@';
    tms_mail_t *m = make_mail(to, "big", big, big);
    size_t len;
    bool crlf;
    char *out = tms_mail_render(m, FROM, DOMAIN, &len);
    CHECK(out != NULL);
    if (out) {
        CHECK(check_crlf(out, len, &crlf) <= 998);
        CHECK(crlf);
        char *dec = part(out, "text/html", "=_tms_" EVENT_ID);
        CHECK_EQ_STR(dec, big);
        free(dec);
    }
    free(out);
    free(big);
    tms_mail_free(&m);
}

int main(void)
{
    RUN_TEST(test_headers_and_parts);
    RUN_TEST(test_text_only);
    RUN_TEST(test_utf8_subject);
    RUN_TEST(test_injection);
    RUN_TEST(test_quoted_printable);
    RUN_TEST(test_no_line_over_998);
    TEST_EXIT();
}
