/* The JWT key of the auth actors: auth.jwt_secret (or its file, read and checked by
 * the configuration), or the one kept in <data.dir>/jwt.secret, made once. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "core/log.h"
#include "server/internal.h"

/* A kept file is made once with 48 random bytes (hex) so tokens survive restarts,
 * and held to the rules of a configured secret file (mode, length after trimming, no
 * published value). */
int server_load_secret(const tms_config_t *cfg, char *out, size_t size)
{
    char path[1100], err[1200];
    unsigned char raw[48];
    struct stat st;
    int fd;
    if (cfg->auth.jwt_secret[0]) {
        snprintf(out, size, "%s", cfg->auth.jwt_secret);
        return 0;
    }
    snprintf(path, sizeof(path), "%s/jwt.secret", cfg->data.dir);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && (errno != ENOENT || lstat(path, &st) == 0)) {
        /* There but unreadable (permissions, a link to nothing): never made anew, which
         * would end every token it signed; the owner decides. */
        int e = errno;
        fprintf(stderr,
                "tms: auth.jwt_secret: the kept key %s is unreadable: %s%s; make it readable by "
                "the user tms runs as (mode 0600), or remove it to have a new one made (tokens "
                "signed with the old one then stop working)\n",
                path, strerror(e),
                e == ENOENT ? " (a symbolic link to a file that does not exist)" : "");
        return -1;
    }
    if (fd >= 0) {
        close(fd);
        if (tms_config_read_secret_file("auth.jwt_secret", path, out, size, err, sizeof(err))) {
            fprintf(stderr, "tms: %s\n", err);
            return -1;
        }
        return 0;
    }
    randombytes_buf(raw, sizeof(raw));
    sodium_bin2hex(out, size, raw, sizeof(raw));
    sodium_memzero(raw, sizeof(raw));
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd < 0 || write(fd, out, strlen(out)) != (ssize_t)strlen(out) || fsync(fd) != 0) {
        fprintf(stderr, "tms: auth.jwt_secret: cannot write %s: %s\n", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    tms_log_info("jwt_secret_generated", "path=%s", path);
    return 0;
}
