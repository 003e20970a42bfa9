/* Allocation wrappers: out of memory aborts with file and line (h2o's h2o_mem_alloc),
 * so callers never see NULL and have no allocation-failure path to handle or test. */
#ifndef TMS_CORE_ALLOC_H
#define TMS_CORE_ALLOC_H

#include <stddef.h>

/** Abort the process after reporting file and line; never returns. */
_Noreturn void tms_oom(const char *file, int line);

void *tms__malloc(size_t n, const char *file, int line);
void *tms__calloc(size_t n, size_t size, const char *file, int line);
void *tms__realloc(void *p, size_t n, const char *file, int line);
char *tms__strdup(const char *s, const char *file, int line);
char *tms__strndup(const char *s, size_t n, const char *file, int line);

#define tms_malloc(n) tms__malloc((n), __FILE__, __LINE__)
#define tms_calloc(n, s) tms__calloc((n), (s), __FILE__, __LINE__)
#define tms_realloc(p, n) tms__realloc((p), (n), __FILE__, __LINE__)
#define tms_strdup(s) tms__strdup((s), __FILE__, __LINE__)
#define tms_strndup(s, n) tms__strndup((s), (n), __FILE__, __LINE__)
#define tms_new(T) ((T *)tms_calloc(1, sizeof(T)))

/* Memory kept for reuse (arenas, recycled requests and calls) is poisoned under
 * AddressSanitizer while it waits, so a use after "free" is still reported. */
#if defined(__SANITIZE_ADDRESS__)
#define TMS_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TMS_ASAN 1
#endif
#endif
#ifdef TMS_ASAN
#include <sanitizer/asan_interface.h>
#define TMS_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define TMS_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define TMS_POISON(p, n) ((void)(p), (void)(n))
#define TMS_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#endif
