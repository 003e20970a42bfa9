/* The one-shot commands of the command line that reach the stores or the mail
 * adapters: they open them with the same code as `tms serve` (adapters.c). Each
 * returns the process's exit status after one line on stderr when it failed. */
#ifndef TMS_SERVER_ADMIN_H
#define TMS_SERVER_ADMIN_H

#include <stdbool.h>

#include "core/config.h"

/* data.dir and the SQLite files of the URLs are found as `tms serve` finds them: the
 * settings (file, environment, --set), a relative path from the current directory. A
 * command that needs a SQLite database refuses one that does not exist, naming the path
 * it looked at (a command run from the wrong directory would otherwise make a new empty
 * database there and find no users in it); `tms migrate --create` makes one. */

/** `tms migrate`: apply pending migrations to the stores of tasks.url and users.url
 * (SQLite, PostgreSQL) and exit; create: a SQLite file that does not exist is made.
 * 0 or 1. */
int tms_admin_migrate(const tms_config_t *cfg, bool create);

/** `tms user set-role EMAIL ROLE`: ROLE "admin" or "user", through the user store's
 * own thread, so the command and a running server share one path to the database.
 * 0, 1 (no such user, no database, store error) or 2 (bad role). */
int tms_admin_set_role(const tms_config_t *cfg, const char *email, const char *role);

/** `tms user create EMAIL --role ROLE`: a new account with password (8 to 256 bytes),
 * hashed with the server's argon2id settings, whatever auth.registration says. 0, 1
 * (email taken, no database, store error) or 2 (bad email, password or role). */
int tms_admin_user_create(const tms_config_t *cfg, const char *email, const char *role,
                          const char *password);

/** `tms mail dlq list`: the SMTP dead letters in mail.dlq_dir on stdout. 0 or 1. */
int tms_admin_dlq_list(const tms_config_t *cfg);

/** `tms mail dlq replay [EVENT_ID]`: send dead letters (all, or one) again through
 * mail.url, synchronously. 0 when every one was sent, 1 otherwise, 2 when mail.url is
 * not SMTP. */
int tms_admin_dlq_replay(const tms_config_t *cfg, const char *event_id);

#endif
