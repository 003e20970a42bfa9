/* Address ranges in CIDR notation (grpc.trusted_peers): a list parsed once at start
 * and matched against a client's address on each call. IPv4 and IPv6; a client on a
 * dual-stack socket, seen as ::ffff:a.b.c.d, matches the IPv4 ranges. */
#ifndef TMS_CORE_CIDR_H
#define TMS_CORE_CIDR_H

#include <stdbool.h>
#include <stddef.h>

#define TMS_CIDR_MAX 64 /* ranges in one list */

typedef struct tms_cidr {
    int family; /* AF_INET or AF_INET6 */
    unsigned char addr[16];
    unsigned bits; /* prefix length: 0..32 or 0..128 */
} tms_cidr_t;

typedef struct tms_cidr_list {
    size_t n;
    tms_cidr_t v[TMS_CIDR_MAX];
} tms_cidr_list_t;

/** Parse "10.0.0.0/8, 192.0.2.7 fd00::/8": ranges separated by commas and/or blanks;
 * a bare address is one host. Empty text is the empty list. Returns 0, or
 * -TMS_EINVAL with err ("\"x\" is ...", without the key) naming the first bad entry:
 * not an address, a prefix out of range, host bits set below the prefix, or more than
 * TMS_CIDR_MAX ranges. */
int tms_cidr_list_parse(const char *text, tms_cidr_list_t *out, char *err, size_t err_len);

/** True when ip (an address as text, as the listeners report a client) lies in one
 * of the list's ranges. O(n); n <= TMS_CIDR_MAX. */
bool tms_cidr_list_match(const tms_cidr_list_t *list, const char *ip);

#endif
