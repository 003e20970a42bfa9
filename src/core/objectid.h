/* Identifiers of users (and of anything else that needs one): MongoDB ObjectIds as
 * 24 lowercase hex characters, made here and checked here. */
#ifndef TMS_CORE_OBJECTID_H
#define TMS_CORE_OBJECTID_H

/** A new MongoDB ObjectId as 24 lowercase hex characters plus NUL: 4-byte
 * seconds, 5 random bytes fixed per process, 3-byte counter. Thread-safe. */
void tms_objectid_new(char out[25]);

/** True when s is exactly 24 lowercase hex characters. */
int tms_objectid_valid(const char *s);

#endif
