/* Password hashing: argon2id (libsodium) for new hashes, and verification of legacy
 * bcrypt hashes written by the Node.js service (libxcrypt). Every function here is
 * slow by design (tens of ms and tens of MiB): call it on a worker thread, never on
 * a loop. Thread-safe; passwords are never logged or kept. */
#ifndef TMS_CORE_PASSWORD_H
#define TMS_CORE_PASSWORD_H

#include <stddef.h>

/* Size of an argon2id hash string with its NUL (crypto_pwhash_STRBYTES). */
#define TMS_PASSWORD_HASH_SIZE 128

/** Hash password[0..len) with argon2id at opslimit/memlimit (0 selects libsodium's
 * INTERACTIVE limits) into out, a NUL-terminated "$argon2id$..." string; out_size must
 * be at least TMS_PASSWORD_HASH_SIZE; returns 0, -TMS_EINVAL for a bad argument or
 * -TMS_EIO when libsodium fails (out of memory). */
int tms_password_hash(const char *password, size_t len, unsigned long long opslimit,
                      size_t memlimit, char *out, size_t out_size);

/** Check password[0..len) against an argon2id hash or a legacy bcrypt hash
 * ($2a$/$2b$/$2y$; like Node's native bcrypt only the bytes before the first NUL and
 * at most 72 bytes count), comparing in constant time; returns 1 on a match and 0 on
 * a mismatch, an unknown or malformed hash, or a library failure. */
int tms_password_verify(const char *password, size_t len, const char *hash);

/** 1 when hash should be replaced by a fresh argon2id hash after the next successful
 * login: bcrypt, argon2 with other parameters than opslimit/memlimit (0 = INTERACTIVE),
 * or an unrecognised format; 0 when it is current. */
int tms_password_needs_rehash(const char *hash, unsigned long long opslimit, size_t memlimit);

#endif
