#include "core/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "core/status.h"

static atomic_int min_level = TMS_LOG_INFO;
static const char *const level_names[] = {"debug", "info", "warn", "error"};

void tms_log_set_level(tms_log_level_t level)
{
    atomic_store(&min_level, (int)level);
}

int tms_log_parse_level(const char *s, tms_log_level_t *out)
{
    for (int i = 0; i < 4; i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (tms_log_level_t)i;
            return 0;
        }
    }
    return -TMS_EINVAL;
}

void tms_log(tms_log_level_t level, const char *event, const char *fmt, ...)
{
    char line[2048];
    struct timespec ts;
    struct tm tm;
    size_t n;
    va_list ap;
    int w;

    if ((int)level < atomic_load(&min_level))
        return;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    n = strftime(line, sizeof(line), "ts=%Y-%m-%dT%H:%M:%S", &tm);
    w = snprintf(line + n, sizeof(line) - n, ".%03ldZ level=%s event=%s", ts.tv_nsec / 1000000,
                 level_names[level], event);
    if (w > 0)
        n += (size_t)w;
    if (fmt && *fmt && n + 1 < sizeof(line)) {
        line[n++] = ' ';
        va_start(ap, fmt);
        w = vsnprintf(line + n, sizeof(line) - n, fmt, ap);
        va_end(ap);
        if (w > 0)
            n += (size_t)w;
    }
    if (n > sizeof(line) - 2)
        n = sizeof(line) - 2;
    line[n++] = '\n';
    /* One fwrite per line: stdio locks the stream, so lines from threads never mix. */
    fwrite(line, 1, n, stderr);
}

const char *tms_log_quote(char *buf, size_t size, const char *s, size_t len)
{
    size_t o = 0;
    if (size < 3) {
        if (size)
            buf[0] = '\0';
        return buf;
    }
    buf[o++] = '"';
    for (size_t i = 0; i < len && o + 5 < size; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            buf[o++] = '\\';
            buf[o++] = (char)c;
        } else if (c < 0x20 || c >= 0x7f) {
            o += (size_t)snprintf(buf + o, size - o, "\\x%02x", c);
        } else {
            buf[o++] = (char)c;
        }
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}
