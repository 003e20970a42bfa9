/* tms_mail_render: one RFC 5322 / MIME message per mail, built so that no caller
 * data can end up as a header of its own. Addresses must be plain ASCII addr-specs,
 * the subject is printable ASCII or RFC 2047 encoded UTF-8, bodies are
 * quoted-printable. The boundary starts with "=_", which quoted-printable output can
 * never contain ('=' is always followed by two hex digits or a line end there). */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/alloc.h"
#include "core/mail_format.h"

typedef struct sbuf {
    char *p;
    size_t len, cap;
} sbuf_t;

static void sb_grow(sbuf_t *b, size_t n)
{
    if (b->len + n + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + n + 1)
        cap *= 2;
    b->p = tms_realloc(b->p, cap);
    b->cap = cap;
}

static void sb_add(sbuf_t *b, const char *s, size_t n)
{
    sb_grow(b, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_str(sbuf_t *b, const char *s)
{
    sb_add(b, s, strlen(s));
}

static void sb_char(sbuf_t *b, char c)
{
    sb_add(b, &c, 1);
}

/* ---- validation ------------------------------------------------------- */

/* A plain addr-spec: printable ASCII without the RFC 5322 specials that would let a
 * value open a display name, a group, a comment, a list or a new header; exactly
 * one '@' with something on both sides. Non-ASCII (SMTPUTF8) addresses are refused
 * rather than sent without the extension. */
static bool addr_ok(const char *s)
{
    size_t n = s ? strlen(s) : 0, at = 0, ats = 0;
    if (n < 3 || n > TMS_EMAIL_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c >= 0x7f || strchr("<>,;:\"()[]\\", c))
            return false;
        if (c == '@') {
            ats++;
            at = i;
        }
    }
    return ats == 1 && at > 0 && at < n - 1;
}

/* Host name for the Message-ID right-hand side. */
static bool domain_ok(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > 253 || s[0] == '.' || s[0] == '-' || s[n - 1] == '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '.'))
            return false;
        if (c == '.' && s[i + 1] == '.')
            return false;
    }
    return true;
}

/* Message-ID left-hand side: letters, digits and '-' (UUIDs), nothing else. */
static bool id_ok(const char *s, size_t max)
{
    size_t n = strnlen(s, max);
    if (n == 0 || n == max)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-'))
            return false;
    }
    return true;
}

/* Length of the UTF-8 sequence starting at s (at most n bytes), or 0 when it is not
 * well-formed (overlongs, surrogates and values above U+10FFFF included). */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    uint32_t cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

/* Subject: no control characters at all (C0, DEL, and C1 as UTF-8), valid UTF-8.
 * Sets *ascii when every byte is printable ASCII. */
static bool subject_ok(const char *s, size_t n, bool *ascii)
{
    const unsigned char *u = (const unsigned char *)s;
    *ascii = true;
    for (size_t i = 0; i < n;) {
        size_t len = utf8_len(u + i, n - i);
        if (len == 0)
            return false;
        if (len == 1 && (u[i] < 0x20 || u[i] == 0x7f))
            return false;
        if (len == 2 && u[i] == 0xc2 && u[i + 1] < 0xa0) /* U+0080..U+009F */
            return false;
        if (len > 1)
            *ascii = false;
        i += len;
    }
    return true;
}

/* ---- headers ------------------------------------------------------------ */

static void add_date(sbuf_t *b, int64_t ms)
{
    static const char *const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                         "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    int64_t secs = ms >= 0 ? ms / 1000 : -((-ms + 999) / 1000);
    time_t t = (time_t)secs;
    struct tm tm;
    char line[64];
    if (!gmtime_r(&t, &tm)) {
        t = 0;
        gmtime_r(&t, &tm);
    }
    /* Names by table, not strftime: the C locale is not guaranteed here. */
    snprintf(line, sizeof(line), "Date: %s, %02d %s %04d %02d:%02d:%02d +0000\r\n",
             days[tm.tm_wday], tm.tm_mday, months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour,
             tm.tm_min, tm.tm_sec);
    sb_str(b, line);
}

static void base64(sbuf_t *b, const unsigned char *s, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)s[i + 1] << 8;
        if (i + 2 < n)
            v |= s[i + 2];
        sb_char(b, tab[(v >> 18) & 63]);
        sb_char(b, tab[(v >> 12) & 63]);
        sb_char(b, i + 1 < n ? tab[(v >> 6) & 63] : '=');
        sb_char(b, i + 2 < n ? tab[v & 63] : '=');
    }
}

/* Encoded words of at most 42 input bytes (56 base64 characters): the first line is
 * "Subject: " + 68 = 77 characters, continuation lines " " + 68. A word never splits
 * a UTF-8 sequence (RFC 2047 section 5). */
#define EW_MAX_BYTES 42

static void add_subject(sbuf_t *b, const char *s, size_t n, bool ascii)
{
    const unsigned char *u = (const unsigned char *)s;
    sb_str(b, "Subject:");
    /* Plain when printable ASCII, short enough not to need folding, and not
     * something a decoder would take for an encoded word. */
    if (ascii && n + 9 <= 78 && !strstr(s, "=?")) {
        sb_char(b, ' ');
        sb_add(b, s, n);
        sb_str(b, "\r\n");
        return;
    }
    for (size_t i = 0; i < n;) {
        size_t end = i;
        while (end < n) {
            size_t len = utf8_len(u + end, n - end);
            if (end + len - i > EW_MAX_BYTES)
                break;
            end += len;
        }
        if (i > 0)
            sb_str(b, "\r\n");
        sb_str(b, " =?UTF-8?B?");
        base64(b, u + i, end - i);
        sb_str(b, "?=");
        i = end;
    }
    sb_str(b, "\r\n");
}

/* ---- quoted-printable ------------------------------------------------- */

/* Encoded lines are at most 76 characters: 75 of content and a soft-break '='. */
#define QP_MAX 75

static void qp_token(sbuf_t *b, size_t *col, const char *tok, size_t n)
{
    if (*col + n > QP_MAX) {
        sb_str(b, "=\r\n");
        *col = 0;
    }
    sb_add(b, tok, n);
    *col += n;
}

/* Bare LF, bare CR and CRLF all count as one line break, written as CRLF. Space and
 * tab are literal except before a line break or at the end, where transports may
 * strip them. */
static void add_qp(sbuf_t *b, const char *text)
{
    static const char hex[] = "0123456789ABCDEF";
    const unsigned char *s = (const unsigned char *)(text ? text : "");
    size_t col = 0;
    for (size_t i = 0; s[i]; i++) {
        unsigned char c = s[i];
        if (c == '\r' || c == '\n') {
            if (c == '\r' && s[i + 1] == '\n')
                i++;
            sb_str(b, "\r\n");
            col = 0;
            continue;
        }
        bool at_eol = s[i + 1] == '\0' || s[i + 1] == '\r' || s[i + 1] == '\n';
        if ((c >= 33 && c <= 126 && c != '=') || ((c == ' ' || c == '\t') && !at_eol)) {
            char t = (char)c;
            qp_token(b, &col, &t, 1);
        } else {
            char t[3] = {'=', hex[c >> 4], hex[c & 15]};
            qp_token(b, &col, t, 3);
        }
    }
}

/* A single-part body ends with a line break so the message does; in multipart
 * bodies the delimiter brings its own CRLF, which is not part of the content. */
static void add_final_break(sbuf_t *b)
{
    if (b->len < 2 || b->p[b->len - 1] != '\n')
        sb_str(b, "\r\n");
}

char *tms_mail_render(const tms_mail_t *mail, const char *from, const char *domain, size_t *len)
{
    sbuf_t b = {0};
    size_t subject_len;
    bool ascii;
    char boundary[64];
    if (!mail || !addr_ok(from) || !domain_ok(domain))
        return NULL;
    if (strnlen(mail->to, sizeof(mail->to)) == sizeof(mail->to) || !addr_ok(mail->to))
        return NULL;
    if (!id_ok(mail->event_id, sizeof(mail->event_id)))
        return NULL;
    subject_len = strnlen(mail->subject, sizeof(mail->subject));
    if (subject_len == sizeof(mail->subject) || !subject_ok(mail->subject, subject_len, &ascii))
        return NULL;

    add_date(&b, mail->date_ms);
    sb_str(&b, "From: ");
    sb_str(&b, from);
    sb_str(&b, "\r\nTo: ");
    sb_str(&b, mail->to);
    sb_str(&b, "\r\n");
    add_subject(&b, mail->subject, subject_len, ascii);
    sb_str(&b, "Message-ID: <");
    sb_str(&b, mail->event_id);
    sb_char(&b, '@');
    sb_str(&b, domain);
    sb_str(&b, ">\r\nMIME-Version: 1.0\r\n");
    if (!mail->html) {
        sb_str(&b, "Content-Type: text/plain; charset=UTF-8\r\n"
                   "Content-Transfer-Encoding: quoted-printable\r\n\r\n");
        add_qp(&b, mail->text);
        add_final_break(&b);
    } else {
        snprintf(boundary, sizeof(boundary), "=_tms_%s", mail->event_id);
        /* Folded: with a 36-character event id the line would pass 78. */
        sb_str(&b, "Content-Type: multipart/alternative;\r\n boundary=\"");
        sb_str(&b, boundary);
        sb_str(&b, "\"\r\n\r\n--");
        sb_str(&b, boundary);
        sb_str(&b, "\r\nContent-Type: text/plain; charset=UTF-8\r\n"
                   "Content-Transfer-Encoding: quoted-printable\r\n\r\n");
        add_qp(&b, mail->text);
        sb_str(&b, "\r\n--");
        sb_str(&b, boundary);
        sb_str(&b, "\r\nContent-Type: text/html; charset=UTF-8\r\n"
                   "Content-Transfer-Encoding: quoted-printable\r\n\r\n");
        add_qp(&b, mail->html);
        sb_str(&b, "\r\n--");
        sb_str(&b, boundary);
        sb_str(&b, "--\r\n");
    }
    if (len)
        *len = b.len;
    return b.p;
}
