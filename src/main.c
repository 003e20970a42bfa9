/* tms: the command line. It parses the arguments, loads the configuration and hands
 * each command to the module that does it: `serve` to the server (server/server.h),
 * the one-shot store and mail commands to server/admin.h.
 *
 * Conventions: `--help`/`-h` prints the command's help on stdout and exits 0 (also for
 * every sub-command); `--version` prints the version; an unknown command, option or an
 * extra argument is named on stderr and exits 2, as does a bad setting; a command that
 * fails at its work exits 1. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "core/build_info.h"
#include "core/config.h"
#include "core/log.h"
#include "server/admin.h"
#include "server/server.h"

#define MAX_SETS 64
#define MAX_ARGS 4

/* Options a command accepts besides --config and --set (bits). */
enum {
    OPT_ROLES = 1u << 0,          /* serve --roles R */
    OPT_DEFAULTS = 1u << 1,       /* config --defaults */
    OPT_CREATE = 1u << 2,         /* migrate --create */
    OPT_ROLE = 1u << 3,           /* user create --role R */
    OPT_PASSWORD_STDIN = 1u << 4, /* user create --password-stdin */
    OPT_NO_CONFIG = 1u << 5,      /* version: takes neither --config nor --set */
};

typedef struct cli cli_t;

typedef struct command {
    const char *name;       /* "serve", "user set-role", "mail dlq list" */
    const char *summary;    /* one line for tms --help */
    int min_args, max_args; /* positional arguments after the name */
    unsigned opts;
    const char *synopsis; /* after "tms NAME" */
    const char *help;
    int (*run)(const cli_t *cli, tms_config_t *cfg);
} command_t;

struct cli {
    const command_t *cmd;
    const char *config_path;
    const char *sets[MAX_SETS];
    int nsets;
    const char *args[MAX_ARGS];
    int nargs;
    char roles_set[96]; /* --roles X, applied as --set server.roles=X */
    bool defaults, create, password_stdin;
    const char *role;
};

static int run_serve(const cli_t *cli, tms_config_t *cfg);
static int run_migrate(const cli_t *cli, tms_config_t *cfg);
static int run_set_role(const cli_t *cli, tms_config_t *cfg);
static int run_user_create(const cli_t *cli, tms_config_t *cfg);
static int run_dlq_list(const cli_t *cli, tms_config_t *cfg);
static int run_dlq_replay(const cli_t *cli, tms_config_t *cfg);
static int run_config(const cli_t *cli, tms_config_t *cfg);
static int run_version(const cli_t *cli, tms_config_t *cfg);

static const char common_options[] =
    "  --config FILE          read settings from FILE (INI; config/tms.conf lists every key)\n"
    "  --set section.key=V    set one key (repeatable); overrides the file and the\n"
    "                         environment variable TMS_<SECTION>_<KEY>\n"
    "  -h, --help             print this help\n";

static const command_t commands[] = {
    {"serve", "run the server", 0, 0, OPT_ROLES, "[--roles R,...] [--config FILE] [--set k=v ...]",
     "Run the server: REST on http.addr (default 0.0.0.0:3000), gRPC on grpc.addr (50051),\n"
     "metrics on metrics.addr (127.0.0.1:9090), embedded SQLite and Maildir in data.dir\n"
     "(./data, relative to the current directory) unless the settings name other stores.\n"
     "  --roles R,...          run only these actors (gateway,auth,task,notifier); the\n"
     "                         others are reached at peers.auth / peers.task\n",
     run_serve},
    {"migrate", "apply database migrations and exit", 0, 0, OPT_CREATE,
     "[--create] [--config FILE] [--set k=v ...]",
     "Apply the database migrations of tasks.url and users.url, then exit. A SQLite\n"
     "database that does not exist yet is refused (a wrong data.dir would otherwise get a\n"
     "new empty one) unless --create is given.\n"
     "  --create               make a new SQLite database when there is none\n",
     run_migrate},
    {"user set-role", "make a user 'admin' or 'user'", 2, 2, 0,
     "EMAIL ROLE [--config FILE] [--set k=v ...]",
     "Make the user with EMAIL an 'admin' or a 'user', in the database of users.url (the\n"
     "server may be running; its workers see the change within auth.user_cache_ms).\n",
     run_set_role},
    {"user create", "create an account (any auth.registration)", 1, 1,
     OPT_ROLE | OPT_PASSWORD_STDIN,
     "EMAIL [--role user|admin] [--password-stdin] [--config FILE] [--set k=v ...]",
     "Create an account in the database of users.url, whatever auth.registration says (the\n"
     "way to make the first admin when registration is admin or closed). The password is\n"
     "read from the first line of standard input (8 to 256 bytes).\n"
     "  --role user|admin      the new user's role (default user)\n"
     "  --password-stdin       read the password from standard input (the default; accepted\n"
     "                         for scripts that say so)\n",
     run_user_create},
    {"mail dlq list", "list SMTP dead letters", 0, 0, 0, "[--config FILE] [--set k=v ...]",
     "List the SMTP dead letters in mail.dlq_dir (default <data.dir>/mail-dlq).\n", run_dlq_list},
    {"mail dlq replay", "send SMTP dead letters again", 0, 1, 0,
     "[EVENT_ID] [--config FILE] [--set k=v ...]",
     "Send the dead letters (all, or the one of EVENT_ID) again through mail.url (SMTP).\n",
     run_dlq_replay},
    {"config", "print the settings in effect (--defaults: the defaults)", 0, 0, OPT_DEFAULTS,
     "[--defaults] [--config FILE] [--set k=v ...]",
     "Print the settings in effect (config file, then TMS_* environment variables, then\n"
     "--set; secrets masked) in config file form, after checking them: a bad value is\n"
     "named on stderr and exits 2, as `tms serve` would.\n"
     "  --defaults             print every key with its default instead (config/tms.conf)\n",
     run_config},
    {"version", "print the version", 0, 0, OPT_NO_CONFIG, "", "Print the version.\n", run_version},
};
#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

/* Groups: a word that only leads to sub-commands ("user", "mail", "mail dlq"). */
static const char *const groups[] = {"user", "mail", "mail dlq"};

static void print_usage(FILE *f)
{
    fputs("usage: tms <command> [options]\n"
          "       tms --help | --version\n"
          "\ncommands:\n",
          f);
    for (size_t i = 0; i < NCOMMANDS; i++)
        fprintf(f, "  %-16s %s\n", commands[i].name, commands[i].summary);
    fputs("\n`tms <command> --help` describes a command and its options.\n"
          "Settings: config/tms.conf (every key, its default and meaning), each also the\n"
          "environment variable TMS_<SECTION>_<KEY> and --set section.key=value.\n",
          f);
}

static void print_command_help(const command_t *c)
{
    printf("usage: tms %s %s\n\n%s", c->name, c->synopsis, c->help);
    if (!(c->opts & OPT_NO_CONFIG))
        printf("%s", common_options);
    else
        printf("  -h, --help             print this help\n");
}

static void print_group_help(const char *group)
{
    size_t n = strlen(group);
    printf("usage: tms %s <command> [options]\n\ncommands:\n", group);
    for (size_t i = 0; i < NCOMMANDS; i++) {
        if (strncmp(commands[i].name, group, n) == 0 && commands[i].name[n] == ' ')
            printf("  tms %s %s\n", commands[i].name, commands[i].synopsis);
    }
    printf("\n`tms %s <command> --help` describes one.\n", group);
}

static bool is_group(const char *name)
{
    for (size_t i = 0; i < sizeof(groups) / sizeof(groups[0]); i++) {
        if (strcmp(groups[i], name) == 0)
            return true;
    }
    return false;
}

static const command_t *find_command(const char *name)
{
    for (size_t i = 0; i < NCOMMANDS; i++) {
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    }
    return NULL;
}

static int usage_error(const char *what, const char *detail)
{
    fprintf(stderr, "tms: %s%s (see tms --help)\n", what, detail ? detail : "");
    return 2;
}

/* The value of an option given as "--opt VALUE" or "--opt=VALUE"; NULL when argv[*i]
 * is not that option. Sets *missing when it is but has no value. */
static const char *option_value(int argc, char **argv, int *i, const char *opt, bool *missing)
{
    size_t n = strlen(opt);
    if (strncmp(argv[*i], opt, n) != 0)
        return NULL;
    if (argv[*i][n] == '=')
        return argv[*i] + n + 1;
    if (argv[*i][n] != '\0')
        return NULL;
    if (*i + 1 >= argc) {
        *missing = true;
        return NULL;
    }
    return argv[++*i];
}

/* Parses argv into cli. Returns -1 when it should continue, else the exit status (0
 * after a help or version text, 2 after a usage error). */
static int parse_cli(int argc, char **argv, cli_t *cli)
{
    char name[64] = "", msg[200];
    bool help = false;
    int i = 1;
    memset(cli, 0, sizeof(*cli));
    /* --config and --set may also come before the command (tms --config f serve). */
    for (; i < argc; i++) {
        const char *v;
        bool missing = false;
        if ((v = option_value(argc, argv, &i, "--config", &missing))) {
            cli->config_path = v;
        } else if ((v = option_value(argc, argv, &i, "--set", &missing))) {
            if (cli->nsets == MAX_SETS)
                return usage_error("too many --set options", NULL);
            cli->sets[cli->nsets++] = v;
        } else if (missing) {
            snprintf(msg, sizeof(msg), "option '%.64s' needs a value", argv[i]);
            return usage_error(msg, NULL);
        } else {
            break;
        }
    }
    /* The command's words: the longest run of non-option words naming a command. */
    for (; i < argc && argv[i][0] != '-'; i++) {
        char next[64];
        if ((size_t)snprintf(next, sizeof(next), "%s%s%s", name, name[0] ? " " : "", argv[i]) >=
            sizeof(next))
            break;
        if (!find_command(next) && !is_group(next))
            break;
        snprintf(name, sizeof(name), "%s", next);
        if (find_command(name))
            break; /* the rest are the command's arguments */
    }
    if (find_command(name))
        i++;
    if (!name[0]) {
        if (i >= argc) {
            print_usage(stderr);
            return 2;
        }
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            print_usage(stdout);
            return 0;
        }
        if (strcmp(argv[i], "--version") == 0)
            return run_version(cli, NULL);
        if (argv[i][0] == '-')
            snprintf(msg, sizeof(msg), "unknown option '%.64s'", argv[i]);
        else
            snprintf(msg, sizeof(msg), "unknown command '%.64s'", argv[i]);
        return usage_error(msg, NULL);
    }
    if (is_group(name) && !find_command(name)) {
        if (i < argc && (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)) {
            print_group_help(name);
            return 0;
        }
        if (i >= argc) {
            fprintf(stderr, "tms: %s: needs a command (see tms %s --help)\n", name, name);
            return 2;
        }
        snprintf(msg, sizeof(msg), "unknown command '%s %.64s'", name, argv[i]);
        return usage_error(msg, NULL);
    }
    cli->cmd = find_command(name);
    for (; i < argc; i++) {
        const char *a = argv[i], *v;
        bool missing = false;
        unsigned o = cli->cmd->opts;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            help = true;
        } else if (!(o & OPT_NO_CONFIG) &&
                   (v = option_value(argc, argv, &i, "--config", &missing))) {
            cli->config_path = v;
        } else if (!(o & OPT_NO_CONFIG) && (v = option_value(argc, argv, &i, "--set", &missing))) {
            if (cli->nsets == MAX_SETS)
                return usage_error("too many --set options", NULL);
            cli->sets[cli->nsets++] = v;
        } else if ((o & OPT_ROLES) && (v = option_value(argc, argv, &i, "--roles", &missing))) {
            if (cli->nsets == MAX_SETS)
                return usage_error("too many --set options", NULL);
            snprintf(cli->roles_set, sizeof(cli->roles_set), "server.roles=%s", v);
            cli->sets[cli->nsets++] = cli->roles_set;
        } else if ((o & OPT_ROLE) && (v = option_value(argc, argv, &i, "--role", &missing))) {
            cli->role = v;
        } else if ((o & OPT_DEFAULTS) && strcmp(a, "--defaults") == 0) {
            cli->defaults = true;
        } else if ((o & OPT_CREATE) && strcmp(a, "--create") == 0) {
            cli->create = true;
        } else if ((o & OPT_PASSWORD_STDIN) && strcmp(a, "--password-stdin") == 0) {
            cli->password_stdin = true;
        } else if (missing) {
            snprintf(msg, sizeof(msg), "%s: option '%.64s' needs a value", cli->cmd->name, a);
            return usage_error(msg, NULL);
        } else if (a[0] == '-' && a[1] != '\0') {
            snprintf(msg, sizeof(msg), "%s: unknown option '%.64s'", cli->cmd->name, a);
            return usage_error(msg, NULL);
        } else if (cli->nargs < cli->cmd->max_args) {
            cli->args[cli->nargs++] = a;
        } else {
            snprintf(msg, sizeof(msg), "%s: unexpected argument '%.64s'", cli->cmd->name, a);
            return usage_error(msg, NULL);
        }
    }
    if (help) {
        print_command_help(cli->cmd);
        return 0;
    }
    if (cli->nargs < cli->cmd->min_args) {
        fprintf(stderr, "tms: %s: missing arguments; usage: tms %s %s\n", cli->cmd->name,
                cli->cmd->name, cli->cmd->synopsis);
        return 2;
    }
    return -1;
}

static void warn_env(void *arg, const char *line)
{
    (void)arg;
    fprintf(stderr, "tms: warning: %s\n", line);
}

/* Defaults, file, environment, --set; one line naming the key on error. */
static int load_config(const cli_t *cli, tms_config_t *cfg)
{
    char err[512] = "";
    tms_log_level_t level;
    tms_config_defaults(cfg);
    tms_config_check_env(warn_env, NULL);
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

static int run_serve(const cli_t *cli, tms_config_t *cfg)
{
    (void)cli;
    return tms_server_serve(cfg);
}

static int run_migrate(const cli_t *cli, tms_config_t *cfg)
{
    return tms_admin_migrate(cfg, cli->create);
}

static int run_set_role(const cli_t *cli, tms_config_t *cfg)
{
    return tms_admin_set_role(cfg, cli->args[0], cli->args[1]);
}

static int run_user_create(const cli_t *cli, tms_config_t *cfg)
{
    char password[512];
    size_t n;
    int rc;
    if (cli->role && strcmp(cli->role, "admin") != 0 && strcmp(cli->role, "user") != 0) {
        fprintf(stderr, "tms: user create: --role must be 'admin' or 'user'\n");
        return 2;
    }
    if (!fgets(password, sizeof(password), stdin)) {
        fprintf(stderr, "tms: user create: no password on standard input (its first line)\n");
        return 2;
    }
    n = strcspn(password, "\r\n");
    password[n] = '\0';
    rc = tms_admin_user_create(cfg, cli->args[0], cli->role ? cli->role : "user", password);
    sodium_memzero(password, sizeof(password));
    return rc;
}

static int run_dlq_list(const cli_t *cli, tms_config_t *cfg)
{
    (void)cli;
    return tms_admin_dlq_list(cfg);
}

static int run_dlq_replay(const cli_t *cli, tms_config_t *cfg)
{
    return tms_admin_dlq_replay(cfg, cli->nargs == 1 ? cli->args[0] : NULL);
}

static int run_config(const cli_t *cli, tms_config_t *cfg)
{
    if (cli->defaults)
        tms_config_write_defaults(stdout);
    else
        tms_config_write(cfg, stdout);
    return fflush(stdout) == 0 ? 0 : 1;
}

static int run_version(const cli_t *cli, tms_config_t *cfg)
{
    (void)cli;
    (void)cfg;
    printf("tms %s (commit %s)\n", TMS_VERSION, tms_build_commit);
    return 0;
}

int main(int argc, char **argv)
{
    cli_t cli;
    tms_config_t *cfg;
    int rc = parse_cli(argc, argv, &cli);
    if (rc >= 0)
        return rc;
    if (cli.cmd->opts & OPT_NO_CONFIG)
        return cli.cmd->run(&cli, NULL);
    if (sodium_init() < 0) {
        fprintf(stderr, "tms: libsodium failed to initialise\n");
        return 1;
    }
    cfg = calloc(1, sizeof(*cfg));
    if (!cfg)
        return 1;
    if (cli.defaults) { /* the documented defaults: no file, environment or --set read */
        rc = cli.cmd->run(&cli, cfg);
    } else if (load_config(&cli, cfg) != 0) {
        rc = 2;
    } else {
        rc = cli.cmd->run(&cli, cfg);
    }
    sodium_memzero(cfg, sizeof(*cfg));
    free(cfg);
    return rc;
}
