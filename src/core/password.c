#include "core/password.h"

#include <crypt.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "core/alloc.h"
#include "core/status.h"

_Static_assert(TMS_PASSWORD_HASH_SIZE == crypto_pwhash_STRBYTES, "argon2 string size");

#define ARGON2ID_PREFIX "$argon2id$"
#define BCRYPT_LEN 60
#define BCRYPT_MAX_KEY 72

static int init(void)
{
    /* Safe to call from any thread, any number of times. */
    return sodium_init() < 0 ? -1 : 0;
}

static void limits(unsigned long long *ops, size_t *mem)
{
    if (*ops == 0)
        *ops = crypto_pwhash_OPSLIMIT_INTERACTIVE;
    if (*mem == 0)
        *mem = crypto_pwhash_MEMLIMIT_INTERACTIVE;
}

static int is_argon2id(const char *hash)
{
    return strncmp(hash, ARGON2ID_PREFIX, sizeof ARGON2ID_PREFIX - 1) == 0;
}

/* "$2a$", "$2b$" or "$2y$", two cost digits, '$', 53 characters of bcrypt's base64. */
static int is_bcrypt(const char *hash)
{
    size_t i;

    if (strnlen(hash, BCRYPT_LEN + 1) != BCRYPT_LEN || hash[0] != '$' || hash[1] != '2' ||
        (hash[2] != 'a' && hash[2] != 'b' && hash[2] != 'y') || hash[3] != '$' || hash[4] < '0' ||
        hash[4] > '3' || hash[5] < '0' || hash[5] > '9' || hash[6] != '$')
        return 0;
    for (i = 7; i < BCRYPT_LEN; i++) {
        char c = hash[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '/'))
            return 0;
    }
    return 1;
}

int tms_password_hash(const char *password, size_t len, unsigned long long opslimit,
                      size_t memlimit, char *out, size_t out_size)
{
    if ((!password && len > 0) || !out || out_size < crypto_pwhash_STRBYTES)
        return -TMS_EINVAL;
    if (init() != 0)
        return -TMS_EIO;
    limits(&opslimit, &memlimit);
    if (opslimit < crypto_pwhash_OPSLIMIT_MIN || memlimit < crypto_pwhash_MEMLIMIT_MIN)
        return -TMS_EINVAL;
    if (crypto_pwhash_str_alg(out, password ? password : "", len, opslimit, memlimit,
                              crypto_pwhash_ALG_ARGON2ID13) != 0)
        return -TMS_EIO;
    return 0;
}

static int verify_bcrypt(const char *password, size_t len, const char *hash)
{
    /* Node's bcrypt hands the password to C as a string, so it ends at the first NUL,
     * and bcrypt itself reads at most 72 bytes. */
    char key[BCRYPT_MAX_KEY + 1];
    struct crypt_data *cd;
    const char *res;
    int match = 0;

    len = password ? strnlen(password, len < BCRYPT_MAX_KEY ? len : BCRYPT_MAX_KEY) : 0;
    if (len > 0)
        memcpy(key, password, len);
    key[len] = '\0';
    /* struct crypt_data is ~32 KiB: too big for a worker's stack; zeroed as required. */
    cd = tms_calloc(1, sizeof *cd);
    res = crypt_rn(key, hash, cd, (int)sizeof *cd);
    if (res && strlen(res) == BCRYPT_LEN)
        match = sodium_memcmp(res, hash, BCRYPT_LEN) == 0;
    sodium_memzero(cd, sizeof *cd);
    sodium_memzero(key, sizeof key);
    free(cd);
    return match;
}

int tms_password_verify(const char *password, size_t len, const char *hash)
{
    if (!hash || (!password && len > 0) || init() != 0)
        return 0;
    if (is_argon2id(hash))
        return crypto_pwhash_str_verify(hash, password ? password : "", len) == 0;
    if (is_bcrypt(hash))
        return verify_bcrypt(password, len, hash);
    return 0;
}

int tms_password_needs_rehash(const char *hash, unsigned long long opslimit, size_t memlimit)
{
    if (!hash || !is_argon2id(hash) || init() != 0)
        return 1;
    limits(&opslimit, &memlimit);
    /* -1 (malformed) also means: replace it. */
    return crypto_pwhash_str_needs_rehash(hash, opslimit, memlimit) != 0;
}
