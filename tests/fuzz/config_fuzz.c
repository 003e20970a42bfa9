/* libFuzzer: the configuration parser. The first byte picks the layer: 0 mod 3, the
 * rest is a config file's contents (tms_config_load_file); 1, every line of the rest
 * is a --set assignment (tms_config_set); 2, every line is NAME=VALUE for an
 * environment variable TMS_NAME (tms_config_load_env). tms_config_finish then runs on
 * what loaded. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/config.h"

static char path[64];

/* Drop every TMS_ variable again, so that inputs do not leak into each other. */
static void clearenv_tms(void)
{
    extern char **environ;
    char name[256];
    for (int again = 1; again;) {
        again = 0;
        for (char **e = environ; *e; e++) {
            const char *eq = strchr(*e, '=');
            if (strncmp(*e, "TMS_", 4) == 0 && eq && (size_t)(eq - *e) < sizeof name) {
                memcpy(name, *e, (size_t)(eq - *e));
                name[eq - *e] = '\0';
                unsetenv(name);
                again = 1;
                break;
            }
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tms_config_t cfg;
    char err[512];
    int rc;
    if (size < 1 || size > 65536)
        return 0;
    if (!path[0])
        snprintf(path, sizeof path, "/tmp/tms-config-fuzz.%ld", (long)getpid());
    tms_config_defaults(&cfg);
    if (data[0] % 3 == 2) {
        char *text = malloc(size), *line, *save = NULL, name[256];
        memcpy(text, data + 1, size - 1);
        text[size - 1] = '\0';
        for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
            char *eq = strchr(line, '=');
            if (!eq || eq == line || (size_t)(eq - line) > 200)
                continue;
            snprintf(name, sizeof name, "TMS_%.*s", (int)(eq - line), line);
            setenv(name, eq + 1, 1);
        }
        (void)tms_config_load_env(&cfg, err, sizeof err);
        free(text);
        clearenv_tms();
    } else if (data[0] % 3 == 0) {
        FILE *f = fopen(path, "wb");
        if (!f)
            abort();
        fwrite(data + 1, 1, size - 1, f);
        fclose(f);
        rc = tms_config_load_file(&cfg, path, err, sizeof err);
        unlink(path);
        if (rc != 0)
            return 0;
    } else {
        char *text = malloc(size), *line, *save = NULL;
        memcpy(text, data + 1, size - 1);
        text[size - 1] = '\0';
        for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
            (void)tms_config_set(&cfg, line, err, sizeof err);
        free(text);
    }
    (void)tms_config_finish(&cfg, err, sizeof err);
    return 0;
}
