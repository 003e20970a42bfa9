/* Listeners and their graceful stop (see listen.h). */
#include "io/http/listen.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/log.h"
#include "core/status.h"

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

/* Bound before any handle exists, so a taken address leaves nothing to close.
 * Returns the socket, or -TMS_EINVAL / -TMS_EIO (logged). */
static int listen_socket(const char *addr, const char *event)
{
    struct sockaddr_storage ss;
    int fd, one = 1;
    socklen_t sl;
    if (parse_addr(addr, &ss) < 0) {
        tms_log_error(event, "addr=%s error=\"invalid address\"", addr);
        return -TMS_EINVAL;
    }
    sl = ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    /* Our own socket: libuv 1.44 has no UV_TCP_REUSEPORT. */
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
        bind(fd, (struct sockaddr *)&ss, sl) < 0 || listen(fd, 511) < 0) {
        tms_log_error(event, "addr=%s error=\"%s\"", addr, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -TMS_EIO;
    }
    return fd;
}

int tms_listener_open(tms_listener_t *l, uv_loop_t *loop, const char *addr, uv_connection_cb cb,
                      const char *event)
{
    int fd, rc;
    if (l->listening || l->stopping) {
        tms_log_error(event, "addr=%s error=\"already listening or stopping\"", addr);
        return -TMS_EINVAL;
    }
    fd = listen_socket(addr, event);
    if (fd < 0)
        return fd;
    uv_tcp_init(loop, &l->tcp);
    l->tcp.data = l->owner;
    l->listening = true;
    rc = uv_tcp_open(&l->tcp, fd);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&l->tcp, 511, cb);
    else
        close(fd);
    if (rc < 0) {
        tms_log_error(event, "addr=%s error=\"%s\"", addr, uv_strerror(rc));
        return -TMS_EIO;
    }
    tms_log_info(event, "addr=%s port=%d", addr, tms_listener_port(l));
    return 0;
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
