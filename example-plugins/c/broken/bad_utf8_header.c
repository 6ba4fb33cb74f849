/* Loads and runs, but its output is garbage: `handle` answers 200 with a header value that is not
 * UTF-8 (the bytes FF FE). The host must turn that into an invalid-response error (502) naming the
 * plugin, never pass it on lossily. Everything else is a valid plugin that answers at once. */
#include <backworks_plugin.h>

#include <string.h>

BW_PLUGIN_METADATA("broken-bad-utf8-header", "0.1.0", "fixture: a header value that is not UTF-8");

/* Any non-null pointer serves as the instance: this plugin keeps no state. */
static int instance_marker;

static const char header_name[] = "x-garbage";
static const char header_value[] = "\xff\xfe";
static const BwKv headers[] = {
    {{(const uint8_t *)header_name, sizeof header_name - 1},
     {(const uint8_t *)header_value, sizeof header_value - 1}},
};

/* Outputs point only at static data, so none has a release function. */
static void out_kind(BwOutput *out, uint32_t kind) {
    memset(out, 0, sizeof *out);
    out->kind = kind;
}

static void *garbage_instance_new(const BwHostServices *host, BwOutput *out) {
    (void)host;
    out_kind(out, BW_OUT_DONE);
    return &instance_marker;
}

static void garbage_instance_free(void *instance) {
    (void)instance;
}

static int32_t garbage_initialize(void *instance, BwStr config_json, BwOutput *out) {
    (void)instance;
    (void)config_json;
    out_kind(out, BW_OUT_DONE);
    return BW_READY;
}

static int32_t garbage_handle(void *instance, const BwRequest *request, BwOutput *out) {
    (void)instance;
    (void)request;
    out_kind(out, BW_OUT_RESPONSE);
    out->response.status = 200;
    out->response.headers.ptr = headers;
    out->response.headers.len = 1;
    return BW_READY;
}

static int32_t garbage_before_request(void *instance, const BwRequest *request, BwOutput *out) {
    (void)instance;
    (void)request;
    out_kind(out, BW_OUT_CONTINUE);
    return BW_READY;
}

static int32_t garbage_after_response(void *instance, const BwRequest *request,
                                      const BwResponse *response, BwOutput *out) {
    (void)response;
    return garbage_handle(instance, request, out);
}

static int32_t garbage_health_check(void *instance, BwOutput *out) {
    (void)instance;
    out_kind(out, BW_OUT_HEALTH);
    out->code = BW_HEALTH_HEALTHY;
    return BW_READY;
}

static int32_t garbage_shutdown(void *instance, BwOutput *out) {
    (void)instance;
    out_kind(out, BW_OUT_DONE);
    return BW_READY;
}

/* Never pending: a task cannot exist, so starting one completes at once with an error. */
static void *garbage_task_start(void *task, BwCompletion completion) {
    BwOutput result;
    out_kind(&result, BW_OUT_ERROR);
    result.code = BW_ERR_INTERNAL;
    result.message = BW_STR_LIT("this plugin has no tasks");
    if (completion.complete != NULL) {
        completion.complete(completion.ctx, &result);
    }
    return task;
}

static void garbage_task_cancel(void *handle) {
    (void)handle;
}

BW_EXPORT_VTABLE = {
    BW_VTABLE_HEADER,
    .instance_new = garbage_instance_new,
    .instance_free = garbage_instance_free,
    .initialize = garbage_initialize,
    .handle = garbage_handle,
    .before_request = garbage_before_request,
    .after_response = garbage_after_response,
    .health_check = garbage_health_check,
    .shutdown = garbage_shutdown,
    .task_start = garbage_task_start,
    .task_cancel = garbage_task_cancel,
};
