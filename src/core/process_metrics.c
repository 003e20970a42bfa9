/* The process's own metrics (metrics.h: tms_metrics_process_register), named as the
 * Prometheus client libraries name them, so dashboards made for other services work. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "core/build_info.h"
#include "core/metrics.h"

static double start_time_s; /* Unix time the process started */

static double cpu_seconds(void *arg)
{
    struct rusage ru;
    (void)arg;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* Field i (0: size, 1: resident) of /proc/self/statm, in bytes. */
static double statm_bytes(int i)
{
    unsigned long v[2] = {0, 0};
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return 0;
    if (fscanf(f, "%lu %lu", &v[0], &v[1]) != 2)
        v[0] = v[1] = 0;
    fclose(f);
    return (double)v[i] * (double)sysconf(_SC_PAGESIZE);
}

static double resident_bytes(void *arg)
{
    (void)arg;
    return statm_bytes(1);
}

static double virtual_bytes(void *arg)
{
    (void)arg;
    return statm_bytes(0);
}

/* O(open fds): a directory read per scrape. */
static double open_fds(void *arg)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    double n = 0;
    (void)arg;
    if (!d)
        return 0;
    while ((e = readdir(d)))
        n += e->d_name[0] != '.';
    closedir(d);
    return n - 1; /* the directory's own descriptor */
}

static double max_fds(void *arg)
{
    struct rlimit rl;
    (void)arg;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY)
        return 0;
    return (double)rl.rlim_cur;
}

static double start_time(void *arg)
{
    (void)arg;
    return start_time_s;
}

static double one(void *arg)
{
    (void)arg;
    return 1;
}

/* The process's start from /proc (ticks after boot + boot time); now if unreadable. */
static double process_start(void)
{
    char buf[1024], *p;
    unsigned long long ticks = 0, btime = 0;
    FILE *f = fopen("/proc/self/stat", "r");
    size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
    if (f)
        fclose(f);
    buf[n] = '\0';
    /* After the command name's ')': state is field 3, starttime field 22. */
    if ((p = strrchr(buf, ')'))) {
        int field = 2;
        for (p++; *p && field < 22; p++) {
            if (*p == ' ')
                field++;
            if (field == 22) {
                ticks = strtoull(p + 1, NULL, 10);
                break;
            }
        }
    }
    if ((f = fopen("/proc/stat", "r"))) {
        while (fgets(buf, sizeof(buf), f)) {
            if (sscanf(buf, "btime %llu", &btime) == 1)
                break;
        }
        fclose(f);
    }
    if (ticks && btime)
        return (double)btime + (double)ticks / (double)sysconf(_SC_CLK_TCK);
    return (double)time(NULL);
}

void tms_metrics_process_register(void)
{
    char labels[160];
    start_time_s = process_start();
    tms_metrics_counter_fn("process_cpu_seconds_total", "user and system CPU time spent in seconds",
                           "", cpu_seconds, NULL);
    tms_metrics_gauge_fn("process_resident_memory_bytes", "resident memory size in bytes", "",
                         resident_bytes, NULL);
    tms_metrics_gauge_fn("process_virtual_memory_bytes", "virtual memory size in bytes", "",
                         virtual_bytes, NULL);
    tms_metrics_gauge_fn("process_open_fds", "open file descriptors", "", open_fds, NULL);
    tms_metrics_gauge_fn("process_max_fds", "the open file descriptor limit (RLIMIT_NOFILE)", "",
                         max_fds, NULL);
    tms_metrics_gauge_fn("process_start_time_seconds",
                         "start time of the process since the Unix epoch in seconds", "",
                         start_time, NULL);
    snprintf(labels, sizeof(labels), "version=\"%s\",commit=\"%s\"", TMS_VERSION, tms_build_commit);
    tms_metrics_gauge_fn("tms_build_info", "the version and git commit of this binary (value 1)",
                         labels, one, NULL);
}
