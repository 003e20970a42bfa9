/* gRPC wire helpers with no I/O, shared by the gRPC adapter and its unit tests:
 * the 5-byte message framing, grpc-timeout values, grpc-message percent-encoding
 * and a minimal protobuf wire reader (presence of proto3 optional fields, the
 * reflection descriptor index). */
#ifndef TMS_IO_GRPC_WIRE_H
#define TMS_IO_GRPC_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TMS_GRPC_FRAME_HEADER 5

/* One length-prefixed message found at the start of a buffer. */
typedef struct tms_grpc_frame {
    bool compressed;     /* the flag byte was 1 */
    const uint8_t *data; /* points into the parsed buffer */
    size_t len;          /* message length */
    size_t consumed;     /* 5 + len */
} tms_grpc_frame_t;

/** Parse one message at buf[0..len). Returns 1 (a whole message in *out), 0 (more
 * bytes needed), -TMS_ERANGE (its declared length exceeds max_len: known from the
 * first 5 bytes, before the body arrives) or -TMS_EINVAL (flag byte not 0 or 1). */
int tms_grpc_frame_parse(const uint8_t *buf, size_t len, size_t max_len, tms_grpc_frame_t *out);

/** Write the 5-byte prefix of an uncompressed message of len bytes. */
void tms_grpc_frame_header(uint8_t out[TMS_GRPC_FRAME_HEADER], uint32_t len);

/** Parse a grpc-timeout value ("1*8DIGIT unit", unit one of H M S m u n) into
 * milliseconds, rounded up. Returns 0 or -TMS_EINVAL. */
int tms_grpc_timeout_parse(const char *s, uint64_t *ms);

/** Format a timeout of ms milliseconds as a grpc-timeout value into out: "<n>m"
 * while it fits in 8 digits, else whole seconds, minutes or hours (rounded up, so
 * the peer never gives up before the caller). Returns out. */
char *tms_grpc_timeout_format(uint64_t ms, char out[16]);

/** Percent-encode s for grpc-message: bytes outside 0x20..0x7E and '%' become %XX.
 * Returns a heap string the caller frees; never NULL. */
char *tms_grpc_percent_encode(const char *s);

/** Decode a grpc-message value (s[0..len)): %XX becomes the byte; a '%' not
 * followed by two hex digits is kept as is (the gRPC spec asks receivers to be
 * lenient). Returns a heap string the caller frees; never NULL. */
char *tms_grpc_percent_decode(const char *s, size_t len);

/* Protobuf wire reader over buf[0..len). */
typedef struct tms_pb_reader {
    const uint8_t *p, *end;
} tms_pb_reader_t;

/* One field read by tms_pb_next. */
typedef struct tms_pb_field {
    uint32_t number;
    int wire_type;       /* 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32 */
    uint64_t varint;     /* wire types 0, 1 and 5 */
    const uint8_t *data; /* wire type 2 */
    size_t len;          /* wire type 2 */
} tms_pb_field_t;

/** Start reading buf[0..len). */
void tms_pb_reader_init(tms_pb_reader_t *r, const uint8_t *buf, size_t len);

/** Read the next field: 1 (*f filled), 0 (end of buffer) or -TMS_EINVAL (malformed;
 * groups are refused). */
int tms_pb_next(tms_pb_reader_t *r, tms_pb_field_t *f);

#endif
