/* Writing JSON straight into a buffer (issue 19): no document tree, no allocation. The
 * caller sizes the buffer with the _bound functions, then writes with the put
 * functions, each of which returns the end of what it wrote. Strings are escaped per
 * RFC 8259 as jansson's json_dumps does without flags (", \ and control characters;
 * \b \f \n \r \t short, others \u00XX; UTF-8 passed through), so a body reads the
 * same whichever writer made it. */
#ifndef TMS_CORE_JSONW_H
#define TMS_CORE_JSONW_H

#include <stddef.h>
#include <stdint.h>

/** Bytes a JSON string of n input bytes can take, quotes included. */
static inline size_t tms_jsonw_string_bound(size_t n)
{
    return 2 + 6 * n;
}

#define TMS_JSONW_INT_MAX 20 /* bytes of the longest int64_t in decimal */

/** s[0..n) as a JSON string, quotes included. */
char *tms_jsonw_string(char *p, const char *s, size_t n);

/** s (NUL-terminated) as a JSON string, or null when s is NULL. */
char *tms_jsonw_string_or_null(char *p, const char *s);

/** v in decimal. */
char *tms_jsonw_int(char *p, int64_t v);

/** n bytes copied as they are (punctuation, keys known to need no escaping). */
char *tms_jsonw_raw(char *p, const char *s, size_t n);

/** A literal of the caller's: tms_jsonw_lit(p, "{\"id\":"). */
#define tms_jsonw_lit(p, lit) tms_jsonw_raw((p), (lit), sizeof(lit) - 1)

#endif
