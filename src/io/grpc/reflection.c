/* Server reflection (grpc.reflection.v1 and v1alpha: one wire format) answered from
 * the descriptor set that protoc embeds at build time (tms_proto_descriptor_set).
 * The set is indexed once: per file its name, serialized FileDescriptorProto,
 * dependencies and the fully-qualified names of its services, methods, messages
 * and enums. A handful of files and a few dozen symbols: linear scans are fine. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <protobuf-c/protobuf-c.h>

#include "core/alloc.h"
#include "core/status.h"
#include "io/grpc/codec.h"
#include "io/grpc/wire.h"
#include "reflection_v1.pb-c.h"

extern const unsigned char tms_proto_descriptor_set[];
extern const unsigned long tms_proto_descriptor_set_len;

#define MAX_FILES 16
#define MAX_DEPS 16
#define MAX_SYMBOLS 256
#define MAX_SERVICES 16

typedef struct pfile {
    char name[128];
    const uint8_t *data;
    size_t len;
    char deps[MAX_DEPS][128];
    int ndeps;
} pfile_t;

typedef struct symbol {
    char name[160];
    int file;
} symbol_t;

static pfile_t files[MAX_FILES];
static int nfiles;
static symbol_t symbols[MAX_SYMBOLS];
static int nsymbols;
static char services[MAX_SERVICES][160];
static int nservices;
static pthread_once_t index_once = PTHREAD_ONCE_INIT;

static void copy_str(char *dst, size_t size, const tms_pb_field_t *f)
{
    size_t n = f->len < size - 1 ? f->len : size - 1;
    memcpy(dst, f->data, n);
    dst[n] = '\0';
}

static void add_symbol(const char *scope, const tms_pb_field_t *name, int file, char *out,
                       size_t out_size)
{
    char local[128];
    copy_str(local, sizeof(local), name);
    int n = snprintf(out, out_size, "%s%s%s", scope, scope[0] ? "." : "", local);
    if (n < 0 || (size_t)n >= out_size) {
        /* Names in our own descriptors are short; a longer one is not indexed
         * rather than indexed under a truncated (wrong) name. */
        out[0] = '\0';
        return;
    }
    if (nsymbols < MAX_SYMBOLS) {
        snprintf(symbols[nsymbols].name, sizeof(symbols[nsymbols].name), "%s", out);
        symbols[nsymbols].file = file;
        nsymbols++;
    }
}

/* The name (field 1) of a nested descriptor message. */
static int name_of(const tms_pb_field_t *msg, tms_pb_field_t *name)
{
    tms_pb_reader_t r;
    tms_pb_reader_init(&r, msg->data, msg->len);
    while (tms_pb_next(&r, name) == 1) {
        if (name->number == 1 && name->wire_type == 2)
            return 1;
    }
    return 0;
}

/* DescriptorProto: name=1, nested_type=3, enum_type=4. */
static void index_message(const tms_pb_field_t *msg, const char *scope, int file)
{
    tms_pb_reader_t r;
    tms_pb_field_t f, name;
    char full[160];
    if (!name_of(msg, &name))
        return;
    add_symbol(scope, &name, file, full, sizeof(full));
    tms_pb_reader_init(&r, msg->data, msg->len);
    while (tms_pb_next(&r, &f) == 1) {
        if (f.wire_type != 2)
            continue;
        if (f.number == 3) {
            index_message(&f, full, file);
        } else if (f.number == 4 && name_of(&f, &name)) {
            char sub[160];
            add_symbol(full, &name, file, sub, sizeof(sub));
        }
    }
}

/* ServiceDescriptorProto: name=1, method=2 (MethodDescriptorProto name=1). */
static void index_service(const tms_pb_field_t *svc, const char *scope, int file)
{
    tms_pb_reader_t r;
    tms_pb_field_t f, name;
    char full[160], sub[160];
    if (!name_of(svc, &name))
        return;
    add_symbol(scope, &name, file, full, sizeof(full));
    if (nservices < MAX_SERVICES)
        snprintf(services[nservices++], sizeof(services[0]), "%s", full);
    tms_pb_reader_init(&r, svc->data, svc->len);
    while (tms_pb_next(&r, &f) == 1) {
        if (f.number == 2 && f.wire_type == 2 && name_of(&f, &name))
            add_symbol(full, &name, file, sub, sizeof(sub));
    }
}

/* FileDescriptorProto: name=1, package=2, dependency=3, message_type=4, enum_type=5,
 * service=6. The package comes before the definitions in protoc's output, but
 * read it first anyway. */
static void index_file(const uint8_t *data, size_t len)
{
    tms_pb_reader_t r;
    tms_pb_field_t f, name;
    char package[128] = "", tmp[160];
    pfile_t *pf;
    int idx;
    if (nfiles == MAX_FILES)
        return;
    idx = nfiles++;
    pf = &files[idx];
    pf->data = data;
    pf->len = len;
    tms_pb_reader_init(&r, data, len);
    while (tms_pb_next(&r, &f) == 1) {
        if (f.wire_type != 2)
            continue;
        if (f.number == 1)
            copy_str(pf->name, sizeof(pf->name), &f);
        else if (f.number == 2)
            copy_str(package, sizeof(package), &f);
        else if (f.number == 3 && pf->ndeps < MAX_DEPS)
            copy_str(pf->deps[pf->ndeps++], sizeof(pf->deps[0]), &f);
    }
    tms_pb_reader_init(&r, data, len);
    while (tms_pb_next(&r, &f) == 1) {
        if (f.wire_type != 2)
            continue;
        if (f.number == 4)
            index_message(&f, package, idx);
        else if (f.number == 5 && name_of(&f, &name))
            add_symbol(package, &name, idx, tmp, sizeof(tmp));
        else if (f.number == 6)
            index_service(&f, package, idx);
    }
}

static void build_index(void)
{
    tms_pb_reader_t r;
    tms_pb_field_t f;
    /* FileDescriptorSet: repeated FileDescriptorProto file = 1. */
    tms_pb_reader_init(&r, tms_proto_descriptor_set, tms_proto_descriptor_set_len);
    while (tms_pb_next(&r, &f) == 1) {
        if (f.number == 1 && f.wire_type == 2)
            index_file(f.data, f.len);
    }
}

static int find_file(const char *name)
{
    for (int i = 0; i < nfiles; i++) {
        if (strcmp(files[i].name, name) == 0)
            return i;
    }
    return -1;
}

/* Symbols may be asked for with a leading dot; a method may be named with a slash. */
static int find_symbol(const char *name)
{
    char norm[160];
    if (name[0] == '.')
        name++;
    snprintf(norm, sizeof(norm), "%s", name);
    for (char *p = norm; *p; p++) {
        if (*p == '/')
            *p = '.';
    }
    for (int i = 0; i < nsymbols; i++) {
        if (strcmp(symbols[i].name, norm) == 0)
            return symbols[i].file;
    }
    return -1;
}

/* The file first, then its transitive dependencies, each once. */
static void collect(int file, int *order, int *n, int *seen)
{
    if (file < 0 || seen[file])
        return;
    seen[file] = 1;
    order[(*n)++] = file;
    for (int d = 0; d < files[file].ndeps; d++)
        collect(find_file(files[file].deps[d]), order, n, seen);
}

/* Longest request string (host, file or symbol name) echoed in a reply; a longer one
 * is echoed empty, so a reply never grows with the request (issue 17). */
#define ECHO_MAX 256

static char *echoed(char *s)
{
    return s && strnlen(s, ECHO_MAX + 1) <= ECHO_MAX ? s : (char *)"";
}

int tms_grpc_reflection_answer(const uint8_t *msg, size_t len, uint8_t **out, size_t *out_len)
{
    Grpc__Reflection__V1__ServerReflectionRequest *req;
    Grpc__Reflection__V1__ServerReflectionResponse resp =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__INIT;
    Grpc__Reflection__V1__FileDescriptorResponse fdr =
        GRPC__REFLECTION__V1__FILE_DESCRIPTOR_RESPONSE__INIT;
    Grpc__Reflection__V1__ListServiceResponse lsr =
        GRPC__REFLECTION__V1__LIST_SERVICE_RESPONSE__INIT;
    Grpc__Reflection__V1__ServiceResponse svc[MAX_SERVICES], *svcp[MAX_SERVICES];
    Grpc__Reflection__V1__ErrorResponse er = GRPC__REFLECTION__V1__ERROR_RESPONSE__INIT;
    Grpc__Reflection__V1__ServerReflectionRequest echo =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT;
    Grpc__Reflection__V1__ExtensionRequest echo_ext = GRPC__REFLECTION__V1__EXTENSION_REQUEST__INIT;
    Grpc__Reflection__V1__ExtensionNumberResponse enr =
        GRPC__REFLECTION__V1__EXTENSION_NUMBER_RESPONSE__INIT;
    ProtobufCBinaryData blobs[MAX_FILES];
    int order[MAX_FILES], seen[MAX_FILES] = {0}, n = 0, file = -1;
    char errmsg[256];

    pthread_once(&index_once, build_index);
    req = grpc__reflection__v1__server_reflection_request__unpack(NULL, len, msg);
    if (!req)
        return -TMS_EINVAL;
    /* original_request: the request's kind and its strings up to ECHO_MAX bytes. */
    echo.host = echoed(req->host);
    echo.message_request_case = req->message_request_case;
    if (req->message_request_case ==
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_EXTENSION) {
        if (req->file_containing_extension) {
            echo_ext.containing_type = echoed(req->file_containing_extension->containing_type);
            echo_ext.extension_number = req->file_containing_extension->extension_number;
        }
        echo.file_containing_extension = &echo_ext;
    } else if (req->message_request_case !=
               GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST__NOT_SET) {
        echo.file_by_filename = echoed(req->file_by_filename); /* a union of strings */
    }
    resp.valid_host = echo.host;
    resp.original_request = &echo;
    switch (req->message_request_case) {
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES:
        for (int i = 0; i < nservices; i++) {
            grpc__reflection__v1__service_response__init(&svc[i]);
            svc[i].name = services[i];
            svcp[i] = &svc[i];
        }
        lsr.n_service = (size_t)nservices;
        lsr.service = svcp;
        resp.message_response_case =
            GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_LIST_SERVICES_RESPONSE;
        resp.list_services_response = &lsr;
        break;
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME:
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL:
        if (req->message_request_case ==
            GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME) {
            file = find_file(req->file_by_filename);
            snprintf(errmsg, sizeof(errmsg), "file not found: %.200s", req->file_by_filename);
        } else {
            file = find_symbol(req->file_containing_symbol);
            snprintf(errmsg, sizeof(errmsg), "symbol not found: %.200s",
                     req->file_containing_symbol);
        }
        if (file < 0)
            goto not_found;
        collect(file, order, &n, seen);
        for (int i = 0; i < n; i++) {
            blobs[i].data = (uint8_t *)files[order[i]].data;
            blobs[i].len = files[order[i]].len;
        }
        fdr.n_file_descriptor_proto = (size_t)n;
        fdr.file_descriptor_proto = blobs;
        resp.message_response_case =
            GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_FILE_DESCRIPTOR_RESPONSE;
        resp.file_descriptor_response = &fdr;
        break;
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_ALL_EXTENSION_NUMBERS_OF_TYPE:
        /* No extensions are declared: a known message has none, others are unknown. */
        if (find_symbol(req->all_extension_numbers_of_type) < 0) {
            snprintf(errmsg, sizeof(errmsg), "type not found: %.200s",
                     req->all_extension_numbers_of_type);
            goto not_found;
        }
        enr.base_type_name = req->all_extension_numbers_of_type;
        resp.message_response_case =
            GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ALL_EXTENSION_NUMBERS_RESPONSE;
        resp.all_extension_numbers_response = &enr;
        break;
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_EXTENSION:
        snprintf(errmsg, sizeof(errmsg), "extension not found");
        goto not_found;
    default:
        er.error_code = TMS_INVALID_ARGUMENT;
        er.error_message = "unknown reflection request";
        resp.message_response_case =
            GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE;
        resp.error_response = &er;
        break;
    }
    goto pack;
not_found:
    er.error_code = TMS_NOT_FOUND;
    er.error_message = errmsg;
    resp.message_response_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE;
    resp.error_response = &er;
pack:
    *out_len = grpc__reflection__v1__server_reflection_response__get_packed_size(&resp);
    *out = tms_malloc(*out_len ? *out_len : 1);
    grpc__reflection__v1__server_reflection_response__pack(&resp, *out);
    grpc__reflection__v1__server_reflection_request__free_unpacked(req, NULL);
    return 0;
}
