/* tms: the command line. It parses the arguments, loads the configuration and hands
 * each command to the module that does it: `serve` to the server (server/server.h),
 * the one-shot store and mail commands to server/admin.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "core/config.h"
#include "core/log.h"
#include "server/admin.h"
#include "server/server.h"

#define MAX_SETS 64

typedef struct cli {
    const char *command;
    const char *config_path;
    const char *sets[MAX_SETS];
    int nsets;
    const char *args[4];
    int nargs;
    char roles_set[96]; /* --roles X, applied as --set server.roles=X */
} cli_t;

static const char usage[] =
    "usage: tms <command> [--config FILE] [--set section.key=value ...]\n"
    "commands:\n"
    "  serve [--roles R,...]      run the server (REST, actors, embedded stores); R any of\n"
    "                             gateway,auth,task,notifier (default all, one process)\n"
    "  migrate                    apply database migrations and exit\n"
    "  user set-role EMAIL ROLE   make a user 'admin' or 'user'\n"
    "  mail dlq list              list SMTP dead letters (mail.dlq_dir)\n"
    "  mail dlq replay [EVENT_ID] send dead letters again through mail.url\n"
    "  config                     print every setting with its default\n"
    "  version                    print the version\n";

static int parse_cli(int argc, char **argv, cli_t *cli)
{
    memset(cli, 0, sizeof(*cli));
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
            cli->config_path = argv[++i];
        } else if (strcmp(argv[i], "--set") == 0 && i + 1 < argc) {
            if (cli->nsets == MAX_SETS)
                return -1;
            cli->sets[cli->nsets++] = argv[++i];
        } else if (strncmp(argv[i], "--set=", 6) == 0 && cli->nsets < MAX_SETS) {
            cli->sets[cli->nsets++] = argv[i] + 6;
        } else if (strcmp(argv[i], "--roles") == 0 && i + 1 < argc && cli->nsets < MAX_SETS) {
            snprintf(cli->roles_set, sizeof(cli->roles_set), "server.roles=%s", argv[++i]);
            cli->sets[cli->nsets++] = cli->roles_set;
        } else if (argv[i][0] == '-') {
            return -1;
        } else if (!cli->command) {
            cli->command = argv[i];
        } else if (cli->nargs < 4) {
            cli->args[cli->nargs++] = argv[i];
        } else {
            return -1;
        }
    }
    return cli->command ? 0 : -1;
}

/* Defaults, file, environment, --set; one line naming the key on error. */
static int load_config(const cli_t *cli, tms_config_t *cfg)
{
    char err[512] = "";
    tms_log_level_t level;
    tms_config_defaults(cfg);
    if (tms_config_load_file(cfg, cli->config_path, err, sizeof(err)) ||
        tms_config_load_env(cfg, err, sizeof(err)))
        goto fail;
    for (int i = 0; i < cli->nsets; i++) {
        if (tms_config_set(cfg, cli->sets[i], err, sizeof(err)))
            goto fail;
    }
    if (tms_config_finish(cfg, err, sizeof(err)))
        goto fail;
    if (tms_log_parse_level(cfg->log.level, &level) == 0)
        tms_log_set_level(level);
    return 0;
fail:
    fprintf(stderr, "tms: %s\n", err);
    return -1;
}

/* `tms mail dlq list|replay [EVENT_ID]`. */
static int cmd_mail_dlq(const tms_config_t *cfg, const cli_t *cli)
{
    if (strcmp(cli->args[1], "list") == 0 && cli->nargs == 2)
        return tms_admin_dlq_list(cfg);
    if (strcmp(cli->args[1], "replay") == 0 && cli->nargs <= 3)
        return tms_admin_dlq_replay(cfg, cli->nargs == 3 ? cli->args[2] : NULL);
    fputs(usage, stderr);
    return 2;
}

int main(int argc, char **argv)
{
    cli_t cli;
    tms_config_t *cfg;
    int rc;
    if (parse_cli(argc, argv, &cli) != 0) {
        fputs(usage, stderr);
        return 2;
    }
    if (strcmp(cli.command, "version") == 0) {
        printf("tms %s\n", TMS_VERSION);
        return 0;
    }
    if (sodium_init() < 0) {
        fprintf(stderr, "tms: libsodium failed to initialise\n");
        return 1;
    }
    cfg = calloc(1, sizeof(*cfg));
    if (!cfg)
        return 1;
    if (strcmp(cli.command, "config") == 0) {
        tms_config_write_defaults(stdout);
        free(cfg);
        return 0;
    }
    if (load_config(&cli, cfg) != 0) {
        free(cfg);
        return 2;
    }
    if (strcmp(cli.command, "serve") == 0 && cli.nargs == 0) {
        rc = tms_server_serve(cfg);
    } else if (strcmp(cli.command, "migrate") == 0 && cli.nargs == 0) {
        rc = tms_admin_migrate(cfg);
    } else if (strcmp(cli.command, "mail") == 0 && cli.nargs >= 2 &&
               strcmp(cli.args[0], "dlq") == 0) {
        rc = cmd_mail_dlq(cfg, &cli);
    } else if (strcmp(cli.command, "user") == 0 && cli.nargs == 3 &&
               strcmp(cli.args[0], "set-role") == 0) {
        rc = tms_admin_set_role(cfg, cli.args[1], cli.args[2]);
    } else {
        fputs(usage, stderr);
        rc = 2;
    }
    free(cfg);
    return rc;
}
