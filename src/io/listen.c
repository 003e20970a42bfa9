/* Listening sockets (see listen.h). */
#include "io/listen.h"

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

int tms_listen_socket(const char *addr, const char *event)
{
    struct sockaddr_storage ss;
    int fd, one = 1;
    socklen_t sl;
    if (parse_addr(addr, &ss) < 0) {
        tms_log_error(event, "addr=%s error=\"invalid address\"", addr);
        return -TMS_EINVAL;
    }
    sl = ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    /* Our own socket: libuv 1.44 has no UV_TCP_REUSEPORT, and binding before any
     * handle exists leaves nothing to close when the address is taken. */
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

int tms_listen_start(uv_loop_t *loop, uv_tcp_t *listener, void *data, int fd, uv_connection_cb cb,
                     const char *addr, const char *event)
{
    int rc;
    uv_tcp_init(loop, listener);
    listener->data = data;
    rc = uv_tcp_open(listener, fd);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)listener, 511, cb);
    else
        close(fd);
    if (rc < 0) {
        tms_log_error(event, "addr=%s error=\"%s\"", addr, uv_strerror(rc));
        return -TMS_EIO;
    }
    return 0;
}

int tms_listen_port(uv_tcp_t *listener)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    if (uv_tcp_getsockname(listener, (struct sockaddr *)&ss, &len) < 0)
        return -1;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}
