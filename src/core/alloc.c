#include "core/alloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void tms_oom(const char *file, int line)
{
    fprintf(stderr, "fatal: out of memory at %s:%d\n", file, line);
    abort();
}

void *tms__malloc(size_t n, const char *file, int line)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        tms_oom(file, line);
    return p;
}

void *tms__calloc(size_t n, size_t size, const char *file, int line)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        tms_oom(file, line);
    return p;
}

void *tms__realloc(void *p, size_t n, const char *file, int line)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        tms_oom(file, line);
    return q;
}

char *tms__strdup(const char *s, const char *file, int line)
{
    return tms__strndup(s, strlen(s), file, line);
}

char *tms__strndup(const char *s, size_t n, const char *file, int line)
{
    char *p = tms__malloc(n + 1, file, line);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}
