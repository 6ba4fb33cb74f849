/*
 * c-hello: a Backworks plugin written in C against plugin-sdk/include/backworks_plugin.h.
 *
 * Every request gets a 200 with `content-type: application/json` and the body
 * {"message":"Hello from C","path":"<request path>"}. Every call finishes at once (BW_READY); the
 * plugin never returns a pending task.
 *
 * Memory: whoever allocates frees. Each output this plugin fills points into at most one malloc'd
 * block, whose address is the output's `owner`, and to static data (string literals, the response's
 * constant header); the host calls the output's `release` (the header's bw_release_block, which
 * calls this library's free) exactly once when it has copied the data. Outputs that only point to
 * static data have no release function. after_response shows the header's bw_respond, which copies
 * a response into such a block in one call.
 *
 * Threads: the host may call any function concurrently, also on one instance. An instance is
 * immutable after instance_new, and no global is written, so no locking is needed.
 *
 * Build (from the workspace root):
 *   cc -shared -fPIC -Wall -Wextra -Werror -std=c11 -I plugin-sdk/include \
 *      -o libc_hello.so example-plugins/c/hello.c
 */
#include <backworks_plugin.h>

#include <stdlib.h>
#include <string.h>

/* No hooks: the empty list says so, so an operator who lists one gets a config error. The schema
 * says the plugin takes no config (none, or an empty map): the host checks the operator's
 * `config:` against it before initialize, and `backworks validate` reads it from this section
 * without loading the library. */
BW_PLUGIN_METADATA_SCHEMA("c-hello", "0.1.0", "answers every request with a JSON greeting, from C",
                          "",
                          BW_JSON({
                              "type": "object",
                              "description": "c-hello takes no configuration",
                              "properties": {},
                              "additionalProperties": false
                          }));

/* One instance per configured plugin. Immutable once created. */
typedef struct HelloInstance {
    /* The host's services; valid until instance_free returns. */
    const BwHostServices *host;
} HelloInstance;

/* ---- Outputs ----------------------------------------------------------------------------------- */

/* An output with no data (kind DONE or CONTINUE). */
static void out_simple(BwOutput *out, uint32_t kind) {
    memset(out, 0, sizeof *out);
    out->kind = kind;
}

/* ---- Logging ----------------------------------------------------------------------------------- */

static void hello_log(const HelloInstance *self, uint32_t level, const char *message) {
    const BwHostServices *host = self->host;
    if (host->log == NULL || level > host->max_log_level) {
        return;
    }
    host->log(host->ctx, level, BW_STR_LIT("c_hello"), bw_str(message, strlen(message)));
}

/* ---- Instances --------------------------------------------------------------------------------- */

static void *hello_instance_new(const BwHostServices *host, BwOutput *out) {
    if (host == NULL) {
        bw_error(out, BW_ERR_INTERNAL, "no host services");
        return NULL;
    }
    /* Use only fields the host has: all of v1.0's, or refuse (this plugin reads none of v1.2's
     * `workers`, so it needs no more). */
    if (host->size < BW_HOST_SERVICES_SIZE_V1_0) {
        bw_error(out, BW_ERR_INTERNAL, "host services are smaller than ABI v1.0's");
        return NULL;
    }
    HelloInstance *self = malloc(sizeof *self);
    if (self == NULL) {
        bw_error(out, BW_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    self->host = host;
    hello_log(self, BW_LOG_INFO, "c-hello instance created");
    out_simple(out, BW_OUT_DONE);
    return self;
}

static void hello_instance_free(void *instance) {
    free(instance);
}

static int32_t hello_initialize(void *instance, BwStr config_json, BwOutput *out) {
    (void)instance;
    (void)config_json; /* the host checked it against the schema in the metadata: none */
    out_simple(out, BW_OUT_DONE);
    return BW_READY;
}

/* ---- handle ------------------------------------------------------------------------------------ */

/* The response's one header: static, so the output points to it with nothing to free. */
static const BwKv JSON_CONTENT_TYPE = {BW_STR_INIT("content-type"), BW_STR_INIT("application/json")};

static const char BODY_START[] = "{\"message\":\"Hello from C\",\"path\":\"";
static const char BODY_END[] = "\"}";

/* Writes `in` as the inside of a JSON string at `to` (at most 6 bytes per input byte); returns the
 * number of bytes written. UTF-8 passes through; quotes, backslashes and control bytes are
 * escaped. */
static size_t json_escape(char *to, const uint8_t *in, size_t len) {
    static const char hex[] = "0123456789abcdef";
    size_t at = 0;
    for (size_t i = 0; i < len; i++) {
        uint8_t c = in[i];
        if (c == '"' || c == '\\') {
            to[at++] = '\\';
            to[at++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            to[at++] = '\\';
            to[at++] = 'u';
            to[at++] = '0';
            to[at++] = '0';
            to[at++] = hex[c >> 4];
            to[at++] = hex[c & 0xf];
        } else {
            to[at++] = (char)c;
        }
    }
    return at;
}

static int32_t hello_handle(void *instance, const BwRequest *request, BwOutput *out) {
    (void)instance;
    /* The request is the host's, borrowed for this call: read it now, keep nothing of it. */
    const uint8_t *path = request->path.len ? request->path.ptr : NULL;
    size_t path_len = request->path.len;
    size_t fixed = (sizeof BODY_START - 1) + (sizeof BODY_END - 1);
    if (path_len > (SIZE_MAX - fixed) / 6) {
        bw_error(out, BW_ERR_BAD_REQUEST, "path too long");
        return BW_READY;
    }
    /* The output's owner: the body bytes, in one block. */
    char *body = malloc(fixed + path_len * 6);
    if (body == NULL) {
        bw_error(out, BW_ERR_INTERNAL, "out of memory");
        return BW_READY;
    }
    size_t len = 0;
    memcpy(body + len, BODY_START, sizeof BODY_START - 1);
    len += sizeof BODY_START - 1;
    if (path_len > 0) {
        len += json_escape(body + len, path, path_len);
    }
    memcpy(body + len, BODY_END, sizeof BODY_END - 1);
    len += sizeof BODY_END - 1;

    /* Static and owned data may mix in one output: `release` frees only the owned block. */
    memset(out, 0, sizeof *out);
    out->kind = BW_OUT_RESPONSE;
    out->response.status = 200;
    out->response.headers.ptr = &JSON_CONTENT_TYPE;
    out->response.headers.len = 1;
    out->response.body = bw_str(body, len);
    out->owner = body;
    out->release = bw_release_block;
    return BW_READY;
}

/* ---- Hooks ------------------------------------------------------------------------------------- */

static int32_t hello_before_request(void *instance, const BwRequest *request, BwOutput *out) {
    (void)instance;
    (void)request;
    out_simple(out, BW_OUT_CONTINUE);
    return BW_READY;
}

static int32_t hello_after_response(void *instance, const BwRequest *request,
                                    const BwResponse *response, BwOutput *out) {
    (void)instance;
    (void)request;
    /* The response is borrowed for this call only: bw_respond returns a copy of it in one owned
     * block (or an error output if it cannot). A hook that changes nothing would rather implement
     * after_response_lent and answer BW_OUT_CONTINUE: then nothing is copied at all. */
    bw_respond(out, response->status, response->headers.ptr, response->headers.len,
               response->body.ptr, response->body.len);
    return BW_READY;
}

/* ---- Health and shutdown ----------------------------------------------------------------------- */

static int32_t hello_health_check(void *instance, BwOutput *out) {
    (void)instance;
    memset(out, 0, sizeof *out);
    out->kind = BW_OUT_HEALTH;
    out->code = BW_HEALTH_HEALTHY;
    return BW_READY;
}

static int32_t hello_shutdown(void *instance, BwOutput *out) {
    (void)instance;
    out_simple(out, BW_OUT_DONE);
    return BW_READY;
}

/* ---- Tasks --------------------------------------------------------------------------------------
 * This plugin never returns BW_PENDING, so the host has no task of ours to start. If it calls
 * task_start anyway, the completion is still called exactly once (with an error) so nothing waits
 * forever; the returned handle is the task pointer itself, and task_cancel has nothing to free. */

static void *hello_task_start(void *task, BwCompletion completion) {
    BwOutput result;
    bw_error(&result, BW_ERR_INTERNAL, "c-hello never returns pending tasks");
    if (completion.complete != NULL) {
        completion.complete(completion.ctx, &result);
    }
    return task;
}

static void hello_task_cancel(void *handle) {
    (void)handle; /* nothing was allocated */
}

/* ---- The exported vtable ----------------------------------------------------------------------- */

BW_EXPORT_VTABLE = {
    BW_VTABLE_HEADER,
    .instance_new = hello_instance_new,
    .instance_free = hello_instance_free,
    .initialize = hello_initialize,
    .handle = hello_handle,
    .before_request = hello_before_request,
    .after_response = hello_after_response,
    .health_check = hello_health_check,
    .shutdown = hello_shutdown,
    .task_start = hello_task_start,
    .task_cancel = hello_task_cancel,
};
