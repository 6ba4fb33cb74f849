/*
 * Shared by the broken fixtures: functions for a vtable that is complete and well-typed, so each
 * fixture differs from a valid plugin in exactly the one way its name says. The host must refuse
 * every fixture before it calls any of these; if it does call one, instance_new fails with a
 * message saying so, and the other functions answer errors, so a test sees the mistake instead of a
 * crash.
 */
#ifndef BACKWORKS_BROKEN_STUBS_H
#define BACKWORKS_BROKEN_STUBS_H

#include <backworks_plugin.h>

#include <string.h>

static const char stub_called[] = "broken fixture: the host must have refused this library before calling it";

static void stub_error(BwOutput *out) {
    memset(out, 0, sizeof *out);
    out->kind = BW_OUT_ERROR;
    out->code = BW_ERR_INTERNAL;
    out->message = BW_STR_LIT(stub_called);
}

static void *stub_instance_new(const BwHostServices *host, BwOutput *out) {
    (void)host;
    stub_error(out);
    return NULL;
}

static void stub_instance_free(void *instance) {
    (void)instance;
}

static int32_t stub_initialize(void *instance, BwStr config_json, BwOutput *out) {
    (void)instance;
    (void)config_json;
    stub_error(out);
    return BW_READY;
}

static int32_t stub_request(void *instance, const BwRequest *request, BwOutput *out) {
    (void)instance;
    (void)request;
    stub_error(out);
    return BW_READY;
}

static int32_t stub_after_response(void *instance, const BwRequest *request,
                                   const BwResponse *response, BwOutput *out) {
    (void)instance;
    (void)request;
    (void)response;
    stub_error(out);
    return BW_READY;
}

static int32_t stub_instance_call(void *instance, BwOutput *out) {
    (void)instance;
    stub_error(out);
    return BW_READY;
}

static void *stub_task_start(void *task, BwCompletion completion) {
    BwOutput result;
    stub_error(&result);
    if (completion.complete != NULL) {
        completion.complete(completion.ctx, &result);
    }
    return task;
}

static void stub_task_cancel(void *handle) {
    (void)handle;
}

/* Every function field of a v1.0 vtable, as designated initializers. */
#define STUB_FUNCTIONS                                                                              \
    .instance_new = stub_instance_new, .instance_free = stub_instance_free,                         \
    .initialize = stub_initialize, .handle = stub_request, .before_request = stub_request,          \
    .after_response = stub_after_response, .health_check = stub_instance_call,                      \
    .shutdown = stub_instance_call, .task_start = stub_task_start, .task_cancel = stub_task_cancel

#endif /* BACKWORKS_BROKEN_STUBS_H */
