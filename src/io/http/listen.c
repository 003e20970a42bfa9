/* Listeners and their graceful stop (see listen.h). */
#include "io/http/listen.h"

#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <sodium.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/ratelimit.h"
#include "core/status.h"

/* A refused address is logged at most once per this long (with how many since). */
#define REFUSED_LOG_MS 60000

/* Open connections of one client address on one group's listeners. */
struct tms_listen_slot {
    struct tms_listen_slot *next; /* hash chain */
    uint64_t hash;
    size_t open;
    uint64_t refused;     /* since the last log line */
    uint64_t last_log_ms; /* 0: never logged */
    char key[TMS_ADDR_KEY_MAX];
};

/* The listeners of this process on one address (one per worker, of one kind). */
struct tms_listen_group {
    tms_listen_group_t *next;
    struct sockaddr_storage ss; /* as bound: the port the kernel gave for :0 */
    char kind[16];
    int refs;
    tms_listen_slot_t **buckets; /* power of two; grows with the addresses counted */
    size_t nbuckets, count;
};

/* Every group of the process and their counts: taken once per accept and per close. */
static pthread_mutex_t groups_lock = PTHREAD_MUTEX_INITIALIZER;
static tms_listen_group_t *groups;
static unsigned char hash_seed[crypto_shorthash_KEYBYTES];
static bool hash_seeded;

static int parse_addr(const char *addr, struct sockaddr_storage *ss)
{
    char host[128];
    const char *port_s, *colon;
    char *end;
    long port;
    if (addr[0] == '[') {
        const char *rb = strchr(addr, ']');
        if (!rb || rb[1] != ':' || (size_t)(rb - addr - 1) >= sizeof(host))
            return -TMS_EINVAL;
        memcpy(host, addr + 1, (size_t)(rb - addr - 1));
        host[rb - addr - 1] = '\0';
        port_s = rb + 2;
    } else {
        colon = strrchr(addr, ':');
        if (!colon || (size_t)(colon - addr) >= sizeof(host))
            return -TMS_EINVAL;
        memcpy(host, addr, (size_t)(colon - addr));
        host[colon - addr] = '\0';
        if (!host[0])
            strcpy(host, "0.0.0.0");
        port_s = colon + 1;
    }
    errno = 0;
    port = strtol(port_s, &end, 10);
    if (errno || end == port_s || *end || port < 0 || port > 65535)
        return -TMS_EINVAL;
    memset(ss, 0, sizeof(*ss));
    if (addr[0] == '[')
        return uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)ss) ? -TMS_EINVAL : 0;
    return uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss) ? -TMS_EINVAL : 0;
}

void tms_listener_init(tms_listener_t *l, void *owner, const size_t *nconns,
                       void (*close_all)(void *owner))
{
    l->owner = owner;
    l->nconns = nconns;
    l->close_all = close_all;
}

void tms_listener_limit(tms_listener_t *l, const char *kind, size_t per_address, unsigned v6_prefix)
{
    char labels[96];
    l->kind = kind;
    l->per_address = per_address;
    l->v6_prefix = v6_prefix ? v6_prefix : 64;
    snprintf(labels, sizeof(labels), "listener=\"%s\",reason=\"per_address\"", kind);
    l->refused_addr =
        tms_metrics_counter("tms_connections_refused_total",
                            "connections closed at accept, by listener and reason", labels);
    snprintf(labels, sizeof(labels), "listener=\"%s\",reason=\"max_connections\"", kind);
    l->refused_max =
        tms_metrics_counter("tms_connections_refused_total",
                            "connections closed at accept, by listener and reason", labels);
}

static socklen_t addr_len(const struct sockaddr_storage *ss)
{
    return ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

static int addr_port(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
    return ntohs(((const struct sockaddr_in *)ss)->sin_port);
}

static bool same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family || addr_port(a) != addr_port(b))
        return false;
    if (a->ss_family == AF_INET6)
        return memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
                      &((const struct sockaddr_in6 *)b)->sin6_addr, 16) == 0;
    return ((const struct sockaddr_in *)a)->sin_addr.s_addr ==
           ((const struct sockaddr_in *)b)->sin_addr.s_addr;
}

/* Under groups_lock. */
static tms_listen_group_t *find_group(const struct sockaddr_storage *ss)
{
    for (tms_listen_group_t *g = groups; g; g = g->next) {
        if (same_addr(&g->ss, ss))
            return g;
    }
    return NULL;
}

static void group_unref(tms_listen_group_t *g)
{
    tms_listen_group_t **pp;
    pthread_mutex_lock(&groups_lock);
    if (--g->refs > 0) {
        pthread_mutex_unlock(&groups_lock);
        return;
    }
    for (pp = &groups; *pp != g; pp = &(*pp)->next)
        ;
    *pp = g->next;
    pthread_mutex_unlock(&groups_lock);
    /* Every connection released its slot before its listener could stop. */
    free(g->buckets);
    free(g);
}

/* Nothing else may listen on ss: a socket bound there without SO_REUSEPORT fails
 * when another process (or anything) listens on it, with or without SO_REUSEPORT.
 * A process that starts in the same instant can still slip in between this check and
 * our bind; a shared data.dir is caught by its lock file either way. */
static int check_free(const struct sockaddr_storage *ss)
{
    int one = 1, rc = 0;
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return errno;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(fd, (const struct sockaddr *)ss, addr_len(ss)) < 0)
        rc = errno;
    close(fd);
    return rc;
}

static const char *bind_error(int err)
{
    return err == EADDRINUSE ? "address already in use (another process listens there)"
                             : strerror(err);
}

int tms_listener_check(const char *addr, char *why, size_t why_len)
{
    struct sockaddr_storage ss;
    int err;
    if (parse_addr(addr, &ss) < 0) {
        snprintf(why, why_len, "invalid address");
        return -TMS_EINVAL;
    }
    pthread_mutex_lock(&groups_lock);
    err = addr_port(&ss) && !find_group(&ss) ? check_free(&ss) : 0;
    pthread_mutex_unlock(&groups_lock);
    if (err) {
        snprintf(why, why_len, "%s", bind_error(err));
        return -TMS_EIO;
    }
    return 0;
}

/* Bound before any handle exists, so a taken address leaves nothing to close.
 * Returns the socket (and joins or creates the group of its address), or
 * -TMS_EINVAL / -TMS_EIO with l->error set. */
static int listen_socket(tms_listener_t *l, const char *addr)
{
    struct sockaddr_storage ss, bound;
    socklen_t bl = sizeof(bound);
    tms_listen_group_t *g;
    int fd = -1, one = 1, err;
    const char *kind = l->kind ? l->kind : "listener";
    if (parse_addr(addr, &ss) < 0) {
        snprintf(l->error, sizeof(l->error), "invalid address");
        return -TMS_EINVAL;
    }
    pthread_mutex_lock(&groups_lock);
    g = addr_port(&ss) ? find_group(&ss) : NULL;
    if (g && strcmp(g->kind, kind) != 0) {
        snprintf(l->error, sizeof(l->error), "this process's %s listener is on it already",
                 g->kind);
        pthread_mutex_unlock(&groups_lock);
        return -TMS_EINVAL;
    }
    if (!g && addr_port(&ss) && (err = check_free(&ss)) != 0) {
        snprintf(l->error, sizeof(l->error), "%s", bind_error(err));
        pthread_mutex_unlock(&groups_lock);
        return -TMS_EIO;
    }
    /* Our own socket: libuv 1.44 has no UV_TCP_REUSEPORT. */
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
        bind(fd, (struct sockaddr *)&ss, addr_len(&ss)) < 0 || listen(fd, 511) < 0 ||
        getsockname(fd, (struct sockaddr *)&bound, &bl) < 0) {
        snprintf(l->error, sizeof(l->error), "%s", bind_error(errno));
        if (fd >= 0)
            close(fd);
        pthread_mutex_unlock(&groups_lock);
        return -TMS_EIO;
    }
    if (!g) {
        g = tms_new(tms_listen_group_t);
        g->ss = bound;
        snprintf(g->kind, sizeof(g->kind), "%s", kind);
        g->nbuckets = 16;
        g->buckets = tms_calloc(g->nbuckets, sizeof(*g->buckets));
        g->next = groups;
        groups = g;
        if (!hash_seeded) {
            randombytes_buf(hash_seed, sizeof(hash_seed));
            hash_seeded = true;
        }
    }
    g->refs++;
    l->group = g;
    pthread_mutex_unlock(&groups_lock);
    return fd;
}

int tms_listener_open(tms_listener_t *l, uv_loop_t *loop, const char *addr, uv_connection_cb cb,
                      const char *event)
{
    int fd, rc;
    if (l->listening || l->stopping) {
        snprintf(l->error, sizeof(l->error), "already listening or stopping");
        tms_log_error(event, "addr=%s error=\"%s\"", addr, l->error);
        return -TMS_EINVAL;
    }
    if (!l->kind)
        tms_listener_limit(l, "listener", 0, 0);
    fd = listen_socket(l, addr);
    if (fd < 0) {
        /* The owner prints l->error as its one line; the log keeps it at debug. */
        tms_log_debug(event, "addr=%s error=\"%s\"", addr, l->error);
        return fd;
    }
    uv_tcp_init(loop, &l->tcp);
    l->tcp.data = l->owner;
    l->listening = true;
    rc = uv_tcp_open(&l->tcp, fd);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&l->tcp, 511, cb);
    else
        close(fd);
    if (rc < 0) {
        snprintf(l->error, sizeof(l->error), "%s", uv_strerror(rc));
        tms_log_error(event, "addr=%s error=\"%s\"", addr, l->error);
        return -TMS_EIO;
    }
    tms_log_info(event, "addr=%s port=%d", addr, tms_listener_port(l));
    return 0;
}

static uint64_t key_hash(const char *key)
{
    unsigned char h[crypto_shorthash_BYTES];
    uint64_t v;
    crypto_shorthash(h, (const unsigned char *)key, strlen(key), hash_seed);
    memcpy(&v, h, sizeof(v));
    return v;
}

/* Under groups_lock: double the buckets once there are more addresses than them. */
static void slots_grow(tms_listen_group_t *g)
{
    size_t n = g->nbuckets * 2;
    tms_listen_slot_t **b;
    if (g->count <= g->nbuckets)
        return;
    b = tms_calloc(n, sizeof(*b));
    for (size_t i = 0; i < g->nbuckets; i++) {
        tms_listen_slot_t *e, *next;
        for (e = g->buckets[i]; e; e = next) {
            next = e->next;
            e->next = b[e->hash & (n - 1)];
            b[e->hash & (n - 1)] = e;
        }
    }
    free(g->buckets);
    g->buckets = b;
    g->nbuckets = n;
}

int tms_listener_admit(tms_listener_t *l, const char *ip, tms_listen_slot_t **slot)
{
    tms_listen_group_t *g = l->group;
    tms_listen_slot_t *e;
    char key[TMS_ADDR_KEY_MAX];
    uint64_t h, now_ms, refused = 0;
    size_t open = 0;
    bool log = false;
    *slot = NULL;
    if (!l->per_address || !g)
        return 0;
    tms_ratelimit_addr_key(ip, l->v6_prefix, key, sizeof(key));
    h = key_hash(key);
    pthread_mutex_lock(&groups_lock);
    for (e = g->buckets[h & (g->nbuckets - 1)]; e; e = e->next) {
        if (e->hash == h && strcmp(e->key, key) == 0)
            break;
    }
    if (!e) {
        e = tms_new(tms_listen_slot_t);
        e->hash = h;
        memcpy(e->key, key, sizeof(key));
        e->next = g->buckets[h & (g->nbuckets - 1)];
        g->buckets[h & (g->nbuckets - 1)] = e;
        g->count++;
        slots_grow(g);
    }
    if (e->open < l->per_address) {
        e->open++;
        *slot = e;
        pthread_mutex_unlock(&groups_lock);
        return 0;
    }
    /* Over the cap (so e->open > 0 and e stays while its connections do). */
    e->refused++;
    now_ms = tms_mono_ms();
    if (!e->last_log_ms || now_ms - e->last_log_ms >= REFUSED_LOG_MS) {
        log = true;
        refused = e->refused;
        open = e->open;
        e->refused = 0;
        e->last_log_ms = now_ms ? now_ms : 1;
    }
    pthread_mutex_unlock(&groups_lock);
    tms_counter_add(l->refused_addr, 1);
    if (log)
        tms_log_warn("conn_refused",
                     "listener=%s reason=per_address client=%s open=%zu limit=%zu "
                     "refused=%llu interval_s=%d",
                     l->kind, key, open, l->per_address, (unsigned long long)refused,
                     REFUSED_LOG_MS / 1000);
    return -TMS_EFULL;
}

void tms_listener_release(tms_listener_t *l, tms_listen_slot_t **slot)
{
    tms_listen_group_t *g = l->group;
    tms_listen_slot_t *e = *slot, **pp;
    if (!e)
        return;
    *slot = NULL;
    pthread_mutex_lock(&groups_lock);
    if (--e->open == 0) {
        for (pp = &g->buckets[e->hash & (g->nbuckets - 1)]; *pp != e; pp = &(*pp)->next)
            ;
        *pp = e->next;
        g->count--;
        free(e);
    }
    pthread_mutex_unlock(&groups_lock);
}

void tms_listener_refused_max(tms_listener_t *l)
{
    if (l->refused_max)
        tms_counter_add(l->refused_max, 1);
}

int tms_listener_port(tms_listener_t *l)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    if (!l->listening || l->closed)
        return -1;
    if (uv_tcp_getsockname(&l->tcp, (struct sockaddr *)&ss, &len) < 0)
        return -1;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

static void on_grace_closed(uv_handle_t *h)
{
    tms_listener_t *l = h->data;
    /* Its connections are gone, and with them their slots in the group. */
    if (l->group)
        group_unref(l->group);
    l->group = NULL;
    l->stopped = true;
    if (l->on_stopped)
        l->on_stopped(l->stop_arg);
}

void tms_listener_maybe_stopped(tms_listener_t *l)
{
    if (!l->stopping || !l->closed || *l->nconns > 0 || l->grace_closing)
        return;
    l->grace_closing = true;
    uv_timer_stop(&l->grace);
    uv_close((uv_handle_t *)&l->grace, on_grace_closed);
}

static void on_listener_closed(uv_handle_t *h)
{
    tms_listener_t *l = (tms_listener_t *)h; /* tcp is the first member */
    l->closed = true;
    tms_listener_maybe_stopped(l);
}

static void on_grace(uv_timer_t *t)
{
    tms_listener_t *l = t->data;
    l->close_all(l->owner);
}

bool tms_listener_stop(tms_listener_t *l, uv_loop_t *loop, uint64_t grace_ms,
                       void (*on_stopped)(void *arg), void *arg)
{
    if (l->stopping)
        return false;
    l->stopping = true;
    l->on_stopped = on_stopped;
    l->stop_arg = arg;
    uv_timer_init(loop, &l->grace);
    l->grace.data = l;
    l->grace_started = true;
    if (l->listening)
        uv_close((uv_handle_t *)&l->tcp, on_listener_closed);
    else
        l->closed = true;
    uv_timer_start(&l->grace, on_grace, grace_ms, 0);
    return true;
}
