/* Small text helpers for validation: trimming, UTF-8 length, hex digests. */
#ifndef TMS_CORE_TEXT_H
#define TMS_CORE_TEXT_H

#include <stddef.h>
#include <stdint.h>

/** Remove leading and trailing ASCII whitespace from s in place; returns s. */
char *tms_text_trim(char *s);

/** Number of code points in s[0..len), or -1 when s is not valid UTF-8 (overlong
 * forms, surrogates and code points above U+10FFFF are invalid) or holds a NUL. */
long tms_utf8_length(const char *s, size_t len);

/** Parse a positive decimal int64 with no sign, spaces or leading zeros; 0 when s
 * is not one (so 0 doubles as "malformed", since ids start at 1). */
int64_t tms_parse_id(const char *s, size_t len);

/** Copy src into dst[size] (size > 0), truncated to size - 1 bytes and always
 * NUL-terminated, as snprintf(dst, size, "%s", src) without printf's cost. Returns dst. */
char *tms_text_copy(char *dst, size_t size, const char *src);

/** Trim and lower-case an email in place and check it (API.md: 3..254 characters, no
 * blanks or control characters, exactly one '@' between a name and a domain). Returns
 * 0, or -1 with *why set to the message every protocol answers. */
int tms_email_normalize(char *email, const char **why);

#endif
