/* The one-shot commands of the command line that reach the stores or the mail
 * adapters: they open them with the same code as `tms serve` (adapters.c). Each
 * returns the process's exit status after one line on stderr when it failed. */
#ifndef TMS_SERVER_ADMIN_H
#define TMS_SERVER_ADMIN_H

#include "core/config.h"

/** `tms migrate`: apply pending migrations to the stores of tasks.url and users.url
 * (SQLite, PostgreSQL) and exit. 0 or 1. */
int tms_admin_migrate(const tms_config_t *cfg);

/** `tms user set-role EMAIL ROLE`: ROLE "admin" or "user", through the user store's
 * own thread, so the command and a running server share one path to the database.
 * 0, 1 (no such user, store error) or 2 (bad role). */
int tms_admin_set_role(const tms_config_t *cfg, const char *email, const char *role);

/** `tms mail dlq list`: the SMTP dead letters in mail.dlq_dir on stdout. 0 or 1. */
int tms_admin_dlq_list(const tms_config_t *cfg);

/** `tms mail dlq replay [EVENT_ID]`: send dead letters (all, or one) again through
 * mail.url, synchronously. 0 when every one was sent, 1 otherwise, 2 when mail.url is
 * not SMTP. */
int tms_admin_dlq_replay(const tms_config_t *cfg, const char *event_id);

#endif
