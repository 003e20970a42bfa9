/* The client behind a reverse proxy (http.trusted_proxies): from a peer in the trusted
 * list, the client address is the rightmost hop of X-Forwarded-For (or, without it, of
 * the for= parameters of Forwarded, RFC 7239) that is not itself a trusted proxy. Hops
 * to the left of it were written by the client and prove nothing; a hop that is no
 * address (garbage, "unknown", an obfuscated name) ends the walk at the last trusted
 * one. From any other peer the headers are ignored. */
#ifndef TMS_IO_HTTP_FORWARDED_H
#define TMS_IO_HTTP_FORWARDED_H

#include <stddef.h>

#include "core/cidr.h"
#include "io/http/http1.h"

/** Write the client address of req, whose connection comes from peer (an IP as text),
 * into out (size bytes): peer itself unless peer is in trusted (NULL or empty: nobody)
 * and the request carries X-Forwarded-For or Forwarded. Returns 1 when out is an
 * address the headers gave, else 0 (out = peer). O(headers x hops x trusted). */
int tms_http_forwarded_client(const tms_http_request_t *req, const char *peer,
                              const tms_cidr_list_t *trusted, char *out, size_t size);

#endif
