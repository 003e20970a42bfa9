/* /openapi.json documents exactly what the REST router serves: its paths and methods
 * equal tms_rest_routes (the operations endpoints and the REST rows of the operation
 * table), and the list size it states is the table's. */
#include <ctype.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "core/ops.h"
#include "io/http/rest.h"
#include "test.h"

extern const unsigned char tms_openapi_json[];
extern const unsigned long tms_openapi_json_len;

#define MAX_ROUTES 64

typedef struct routes {
    char items[MAX_ROUTES][96]; /* "GET /api/task/:id" */
    size_t n;
} routes_t;

static void add(routes_t *r, const char *method, const char *route)
{
    if (r->n < MAX_ROUTES)
        snprintf(r->items[r->n++], sizeof(r->items[0]), "%s %s", method, route);
}

static void on_route(void *arg, const char *method, const char *route)
{
    add(arg, method, route);
}

static int contains(const routes_t *r, const char *item)
{
    for (size_t i = 0; i < r->n; i++) {
        if (strcmp(r->items[i], item) == 0)
            return 1;
    }
    return 0;
}

/* "/api/task/{id}" -> "/api/task/:id": the router's notation. */
static void router_path(const char *in, char *out, size_t size)
{
    size_t o = 0;
    for (const char *p = in; *p && o + 4 < size; p++) {
        if (*p == '{') {
            memcpy(out + o, ":id", 3);
            o += 3;
            while (*p && *p != '}')
                p++;
            if (!*p)
                break;
        } else {
            out[o++] = *p;
        }
    }
    out[o] = '\0';
}

static json_t *load(void)
{
    json_error_t err;
    json_t *doc = json_loadb((const char *)tms_openapi_json, tms_openapi_json_len, 0, &err);
    CHECK(doc != NULL);
    return doc;
}

static void test_paths_are_the_routes(void)
{
    static const char *const methods[] = {"get",     "put",  "post",  "delete",
                                          "options", "head", "patch", "trace"};
    routes_t served = {0}, documented = {0};
    json_t *doc = load(), *paths, *item;
    const char *path;
    if (!doc)
        return;
    tms_rest_routes(on_route, &served);
    paths = json_object_get(doc, "paths");
    CHECK(json_is_object(paths));
    json_object_foreach(paths, path, item)
    {
        char route[80], method[16];
        router_path(path, route, sizeof(route));
        for (size_t m = 0; m < sizeof(methods) / sizeof(methods[0]); m++) {
            if (!json_object_get(item, methods[m]))
                continue;
            size_t k = 0;
            for (; methods[m][k] && k + 1 < sizeof(method); k++)
                method[k] = (char)toupper((unsigned char)methods[m][k]);
            method[k] = '\0';
            add(&documented, method, route);
        }
    }
    for (size_t i = 0; i < served.n; i++) {
        if (!contains(&documented, served.items[i]))
            fprintf(stderr, "  served, not in /openapi.json: %s\n", served.items[i]);
        CHECK(contains(&documented, served.items[i]));
    }
    for (size_t i = 0; i < documented.n; i++) {
        if (!contains(&served, documented.items[i]))
            fprintf(stderr, "  in /openapi.json, not served: %s\n", documented.items[i]);
        CHECK(contains(&served, documented.items[i]));
    }
    CHECK_EQ_INT(served.n, documented.n);
    json_decref(doc);
}

static void test_list_size_is_the_tables(void)
{
    const tms_op_t *list = tms_op_get(TMS_API_TASK_LIST);
    json_t *doc = load(), *params, *p;
    size_t i;
    int seen = 0;
    char route[80];
    if (!doc)
        return;
    /* The row's route in the document's notation has no parameter: the same string. */
    snprintf(route, sizeof(route), "%s", list->rest_route);
    params = json_object_get(
        json_object_get(json_object_get(json_object_get(doc, "paths"), route), "get"),
        "parameters");
    json_array_foreach(params, i, p)
    {
        json_t *schema = json_object_get(p, "schema");
        if (strcmp(json_string_value(json_object_get(p, "name")), "limit") != 0)
            continue;
        seen = 1;
        CHECK_EQ_INT(json_integer_value(json_object_get(schema, "minimum")), list->list.min);
        CHECK_EQ_INT(json_integer_value(json_object_get(schema, "maximum")), list->list.max);
        CHECK_EQ_INT(json_integer_value(json_object_get(schema, "default")), list->list.def);
    }
    CHECK(seen);
    json_decref(doc);
}

int main(void)
{
    RUN_TEST(test_paths_are_the_routes);
    RUN_TEST(test_list_size_is_the_tables);
    TEST_EXIT();
}
