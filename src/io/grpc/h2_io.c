/* One nghttp2 session over one uv_tcp_t (see h2_io.h). */
#include "io/grpc/h2_io.h"

#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"

#define WRITE_HIGH (1024 * 1024) /* stop pulling frames while this much is unwritten */
#define LINGER_MS 500            /* a closing connection waits this long for the peer's FIN */

typedef struct wreq {
    uv_write_t w;
    tms_h2_io_t *io;
    size_t len;
    char *heap; /* TLS: the ciphertext (ours to free); else the bytes are in data */
    uint8_t data[];
} wreq_t;

static void on_handle_closed(uv_handle_t *h)
{
    tms_h2_io_t *io = h->data;
    if (--io->handles == 0) {
        tms_flush_item_remove(&io->dirty);
        tms_tls_free(&io->tls);
        io->ops->closed(io);
    }
}

static void flush_item(tms_flush_item_t *item)
{
    tms_h2_io_flush(TMS_FLUSH_OWNER(item, tms_h2_io_t, dirty)); /* may close it */
}

void tms_h2_flusher_init(tms_flush_later_t *f, uv_loop_t *loop)
{
    tms_flush_later_init(f, loop, flush_item);
}

void tms_h2_io_flush_later(tms_h2_io_t *io, tms_flush_later_t *f)
{
    if (io->closing)
        return;
    if (!tms_flush_later_add(f, &io->dirty)) /* the owner is stopping: no turn to wait for */
        tms_h2_io_flush(io);
}

void tms_h2_io_init(tms_h2_io_t *io, uv_loop_t *loop, const tms_h2_io_ops_t *ops, void *owner,
                    char *rbuf, size_t rbuf_len)
{
    io->ops = ops;
    io->owner = owner;
    io->rbuf = rbuf;
    io->rbuf_len = rbuf_len;
    io->last_read_ms = io->last_write_ms = io->started_ms = uv_now(loop);
    uv_tcp_init(loop, &io->tcp);
    uv_timer_init(loop, &io->timer);
    io->tcp.data = io->timer.data = io;
    io->handles = 2;
}

static void close_handles(tms_h2_io_t *io)
{
    if (io->handles_closing)
        return;
    io->handles_closing = true;
    uv_timer_stop(&io->timer);
    uv_close((uv_handle_t *)&io->timer, on_handle_closed);
    uv_close((uv_handle_t *)&io->tcp, on_handle_closed);
}

static void on_linger_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    tms_h2_io_t *io = h->data;
    (void)suggested;
    *buf = uv_buf_init(io->rbuf, (unsigned)io->rbuf_len);
}

/* Lingering: what the peer still sends is read and dropped until it closes too. */
static void on_linger_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    if (nread < 0) /* EOF (the peer has everything we sent) or an error */
        close_handles(stream->data);
}

static void on_linger_timeout(uv_timer_t *t)
{
    close_handles(t->data);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    tms_h2_io_t *io = req->data;
    if (status < 0 || uv_read_start((uv_stream_t *)&io->tcp, on_linger_alloc, on_linger_read) < 0)
        close_handles(io);
}

/* A close with unread bytes in the socket makes the kernel send RST, and a peer that
 * gets RST may drop what we wrote last (our GOAWAY, a PING ACK) before reading it.
 * So: FIN after the pending writes (uv_shutdown), read and drop until the peer
 * closes as well, LINGER_MS at most, then close. */
static int send_bytes(tms_h2_io_t *io, char *heap, const uint8_t *data, size_t len);

void tms_h2_io_close(tms_h2_io_t *io)
{
    io->closing = true;
    uv_timer_stop(&io->timer);
    uv_read_stop((uv_stream_t *)&io->tcp);
    if (io->tls && !io->handles_closing) {
        /* close_notify, or the alert of a failed handshake, before the FIN */
        size_t n;
        char *out;
        tms_tls_shutdown(io->tls);
        out = tms_tls_take(io->tls, &n);
        if (out)
            (void)send_bytes(io, out, NULL, n);
    }
    io->shutdown_req.data = io;
    if (uv_is_writable((uv_stream_t *)&io->tcp) &&
        uv_shutdown(&io->shutdown_req, (uv_stream_t *)&io->tcp, on_shutdown) == 0) {
        uv_timer_start(&io->timer, on_linger_timeout, LINGER_MS, 0);
        return;
    }
    close_handles(io);
}

static void on_write(uv_write_t *w, int status)
{
    wreq_t *wr = (wreq_t *)w;
    tms_h2_io_t *io = wr->io;
    io->unwritten -= wr->len;
    if (io->held)
        *io->held -= wr->len;
    io->last_write_ms = uv_now(io->tcp.loop);
    io->writes--;
    free(wr->heap);
    free(wr);
    if (io->closing)
        return;
    if (status < 0) {
        io->ops->fail(io, uv_strerror(status));
        return;
    }
    tms_h2_io_flush(io);
}

/* One uv_write of heap (taken: TLS ciphertext) or of a copy of data. Returns 0 or
 * the negative libuv error (heap is freed either way). */
static int send_bytes(tms_h2_io_t *io, char *heap, const uint8_t *data, size_t len)
{
    wreq_t *wr = tms_malloc(sizeof(*wr) + (heap ? 0 : len));
    uv_buf_t b;
    int rc;
    wr->io = io;
    wr->len = len;
    wr->heap = heap;
    if (!heap && data)
        memcpy(wr->data, data, len);
    b = uv_buf_init(heap ? heap : (char *)wr->data, (unsigned)len);
    rc = uv_write(&wr->w, (uv_stream_t *)&io->tcp, &b, 1, on_write);
    if (rc < 0) {
        free(heap);
        free(wr);
        return rc;
    }
    if (io->unwritten == 0)
        io->last_write_ms = uv_now(io->tcp.loop);
    io->unwritten += len;
    if (io->held)
        *io->held += len;
    io->writes++;
    return 0;
}

/* What TLS has to send (handshake, tickets, alerts, records). 0 or a libuv error. */
static int send_tls(tms_h2_io_t *io)
{
    size_t n;
    char *out = tms_tls_take(io->tls, &n);
    return out ? send_bytes(io, out, NULL, n) : 0;
}

void tms_h2_io_flush(tms_h2_io_t *io)
{
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    int rc;
    if (io->closing)
        return;
    if (io->tls && !tms_tls_established(io->tls)) { /* frames wait for the handshake */
        if ((rc = send_tls(io)) < 0)
            io->ops->fail(io, uv_strerror(rc));
        return;
    }
    while (io->unwritten + len < WRITE_HIGH) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(io->h2, &data);
        if (n < 0) {
            free(buf);
            io->ops->fail(io, nghttp2_strerror((int)n));
            return;
        }
        if (n == 0)
            break;
        if (len + (size_t)n > cap) {
            cap = cap ? cap : 16384;
            while (cap < len + (size_t)n)
                cap *= 2;
            buf = tms_realloc(buf, cap);
        }
        memcpy(buf + len, data, (size_t)n);
        len += (size_t)n;
    }
    if (io->tls) {
        if (len && tms_tls_write(io->tls, buf, len) != 0) {
            free(buf);
            io->ops->fail(io, tms_tls_error(io->tls));
            return;
        }
        rc = send_tls(io);
    } else {
        rc = len ? send_bytes(io, NULL, buf, len) : 0;
    }
    free(buf);
    if (rc < 0) {
        io->ops->fail(io, uv_strerror(rc));
        return;
    }
    /* The session is done (after a GOAWAY, when its last stream ended). */
    if (io->writes == 0 && !nghttp2_session_want_read(io->h2) &&
        !nghttp2_session_want_write(io->h2))
        io->ops->fail(io, "connection closed");
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    tms_h2_io_t *io = h->data;
    *buf = uv_buf_init(io->rbuf, (unsigned)io->rbuf_len);
}

static int on_plaintext(void *arg, const char *data, size_t len)
{
    tms_h2_io_t *io = arg;
    ssize_t rv;
    if (io->closing)
        return 1;
    rv = nghttp2_session_mem_recv(io->h2, (const uint8_t *)data, len);
    if (rv < 0) {
        io->recv_rv = (int)rv;
        return 1;
    }
    return 0;
}

/* Ciphertext read: handshake, then plaintext to the session. */
static void tls_read(tms_h2_io_t *io, const char *data, size_t len)
{
    bool was = tms_tls_established(io->tls);
    int rc, wrc;
    io->recv_rv = 0;
    rc = tms_tls_input(io->tls, data, len, on_plaintext, io);
    if (io->closing)
        return;
    if (io->recv_rv < 0) {
        if (io->ops->recv_failed)
            io->ops->recv_failed(io, io->recv_rv);
        else
            io->ops->fail(io, nghttp2_strerror(io->recv_rv));
        return;
    }
    if (rc < 0) { /* the alert goes out with the close */
        io->ops->fail(io, tms_tls_error(io->tls));
        return;
    }
    if ((wrc = send_tls(io)) < 0) {
        io->ops->fail(io, uv_strerror(wrc));
        return;
    }
    if (!was && tms_tls_established(io->tls) && io->ops->established) {
        io->ops->established(io);
        if (io->closing)
            return;
    }
    if (rc == TMS_TLS_EOF) {
        io->ops->fail(io, "connection closed by peer");
        return;
    }
    tms_h2_io_flush(io);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    tms_h2_io_t *io = stream->data;
    ssize_t rv;
    if (io->closing)
        return;
    if (nread < 0) {
        io->ops->fail(io, nread == UV_EOF ? "connection closed by peer" : uv_strerror((int)nread));
        return;
    }
    if (nread == 0)
        return;
    /* Noted, not a timer restart: a peer that keeps sending must not keep the
     * owner's periodic checks (idle, deadlines) from running. */
    io->last_read_ms = uv_now(io->tcp.loop);
    if (io->tls) {
        tls_read(io, buf->base, (size_t)nread);
        return;
    }
    rv = nghttp2_session_mem_recv(io->h2, (const uint8_t *)buf->base, (size_t)nread);
    if (rv < 0) {
        if (io->ops->recv_failed)
            io->ops->recv_failed(io, (int)rv);
        else
            io->ops->fail(io, nghttp2_strerror((int)rv));
        return;
    }
    tms_h2_io_flush(io);
}

static int read_start(tms_h2_io_t *io)
{
    int rc;
    if (io->reading)
        return 0;
    rc = uv_read_start((uv_stream_t *)&io->tcp, on_alloc, on_read);
    io->reading = rc == 0;
    return rc;
}

int tms_h2_io_start(tms_h2_io_t *io, const nghttp2_settings_entry *iv, size_t niv)
{
    uv_tcp_nodelay(&io->tcp, 1);
    nghttp2_submit_settings(io->h2, NGHTTP2_FLAG_NONE, iv, niv);
    nghttp2_session_set_local_window_size(io->h2, NGHTTP2_FLAG_NONE, 0, TMS_H2_CONN_WINDOW);
    return read_start(io);
}

int tms_h2_io_handshake(tms_h2_io_t *io)
{
    int rc;
    uv_tcp_nodelay(&io->tcp, 1);
    if ((rc = send_tls(io)) < 0)
        return rc;
    return read_start(io);
}

bool tms_h2_io_handshake_overdue(tms_h2_io_t *io, uint64_t now, uint64_t timeout_ms)
{
    if (!io->tls || tms_tls_established(io->tls) || now - io->started_ms < timeout_ms)
        return false;
    tms_tls_timed_out(io->tls);
    return true;
}
