#include "core/clock.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

int64_t tms_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t tms_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void put2(char *p, int v)
{
    p[0] = (char)('0' + v / 10);
    p[1] = (char)('0' + v % 10);
}

/* Howard Hinnant's days_from_civil, inverted: the date of a day count since
 * 1970-01-01 (proleptic Gregorian), without gmtime's locking or strftime. */
static void civil_from_days(int64_t z, int *y, int *m, int *d)
{
    int64_t era, yoe, doy, mp;
    z += 719468;
    era = (z >= 0 ? z : z - 146096) / 146097;
    uint64_t doe = (uint64_t)(z - era * 146097);
    yoe = (int64_t)((doe - doe / 1460 + doe / 36524 - doe / 146096) / 365);
    doy = (int64_t)doe - (365 * yoe + yoe / 4 - yoe / 100);
    mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = (int)(yoe + era * 400 + (*m <= 2));
}

char *tms_format_time(int64_t ms, char *buf, size_t size)
{
    time_t secs = (time_t)(ms / 1000);
    /* The common case (years 1970-9999) by hand: this runs twice per task rendered. */
    if (ms >= 0 && ms < 253402300800000LL && size >= 25) {
        int64_t days = ms / 86400000, rem = ms % 86400000;
        int y, m, d, sod = (int)(rem / 1000), milli = (int)(rem % 1000);
        civil_from_days(days, &y, &m, &d);
        put2(buf, y / 100);
        put2(buf + 2, y % 100);
        buf[4] = '-';
        put2(buf + 5, m);
        buf[7] = '-';
        put2(buf + 8, d);
        buf[10] = 'T';
        put2(buf + 11, sod / 3600);
        buf[13] = ':';
        put2(buf + 14, sod / 60 % 60);
        buf[16] = ':';
        put2(buf + 17, sod % 60);
        buf[19] = '.';
        buf[20] = (char)('0' + milli / 100);
        put2(buf + 21, milli % 100);
        buf[23] = 'Z';
        buf[24] = '\0';
        return buf;
    }
    struct tm tm;
    size_t n;
    gmtime_r(&secs, &tm);
    n = strftime(buf, size, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, size - n, ".%03dZ", (int)(ms % 1000));
    return buf;
}
