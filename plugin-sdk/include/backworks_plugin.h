/*
 * backworks_plugin.h - the Backworks plugin C ABI, version 1.4.
 *
 * This header is the exact C twin of `plugin-sdk/src/abi.rs` (and of the metadata format of
 * `plugin-sdk/src/metadata.rs`). Every constant, struct, field order and field type here matches
 * the Rust definitions; the _Static_asserts at the end check the same sizes and offsets as the Rust
 * layout test. If the two ever disagree, abi.rs is right and this file is a bug.
 *
 * A plugin library:
 *   1. carries its metadata in the section ".backworks_meta" (BW_PLUGIN_METADATA below), so the
 *      host can inspect the file without loading it;
 *   2. exports one symbol, `backworks_plugin`, a constant BwPluginVTable (BW_EXPORT_VTABLE below).
 *
 * Rules (see docs/abi.md for the full protocol):
 *   - Whoever allocates, frees. What the plugin hands over lives in a BwOutput whose `release`
 *     function (the plugin's own) the host calls exactly once, when `release` is not NULL. What the
 *     host lends to a call (BwRequest, BwResponse, config bytes, BwHostServices strings) is borrowed
 *     for the duration of that call only: copy what you keep. The one exception is the request of
 *     handle_lent, before_request_lent and after_response_lent (ABI 1.2), lent until the call is
 *     over, also while it is pending.
 *   - Nothing unwinds across the boundary: every function returns a status.
 *   - No blocking: a call either finishes at once (BW_READY) or returns BW_PENDING with a task that
 *     the host starts with task_start; the plugin then calls the completion exactly once.
 *   - Every function may be called concurrently from several threads, also on one instance.
 *
 * Integers are native-endian; strings are UTF-8 and NOT NUL-terminated (pointer + length).
 *
 * Minimal plugin:
 *
 *     #include <backworks_plugin.h>
 *
 *     BW_PLUGIN_METADATA("my-plugin", "0.1.0", "what it does");
 *
 *     static void *my_new(const BwHostServices *host, BwOutput *out) { ... }
 *     ... one function per field ...
 *
 *     BW_EXPORT_VTABLE = {
 *         BW_VTABLE_HEADER,
 *         .instance_new = my_new,
 *         .instance_free = my_free,
 *         .initialize = my_initialize,
 *         .handle = my_handle,
 *         .before_request = my_before_request,
 *         .after_response = my_after_response,
 *         .health_check = my_health_check,
 *         .shutdown = my_shutdown,
 *         .task_start = my_task_start,
 *         .task_cancel = my_task_cancel,
 *     };
 *
 * Build: cc -shared -fPIC -std=c11 -I plugin-sdk/include -o libmy_plugin.so my_plugin.c
 * (see example-plugins/c/hello.c for a complete plugin).
 */
#ifndef BACKWORKS_PLUGIN_H
#define BACKWORKS_PLUGIN_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------------------------
 * Versions and names
 * --------------------------------------------------------------------------------------------- */

/* The first eight bytes of BwPluginVTable: "BWPLUGIN" read as a little-endian uint64_t. */
#define BW_ABI_MAGIC UINT64_C(0x4E4947554C505742)
/* Incompatible changes bump the major version; a host only loads plugins of its own major. */
#define BW_ABI_MAJOR 1
/* Appended fields bump the minor version; a host loads plugins of any minor of its major. */
#define BW_ABI_MINOR 4
/* The version of backworks-plugin-sdk this header belongs to, written into the metadata `sdk` key.
 * The host accepts plugins whose SDK version is in its own semver family. */
#define BW_SDK_VERSION "0.1.0"
/* The name of the exported static BwPluginVTable. */
#define BW_ENTRY_SYMBOL "backworks_plugin"
/* The section that holds the plugin's metadata on ELF targets. */
#define BW_METADATA_SECTION ".backworks_meta"
/* The section that holds the plugin's metadata on Mach-O targets (segment,section). */
#define BW_METADATA_SECTION_MACHO "__DATA,__bw_meta"
/* The section that holds the plugin's metadata on Windows (PE) targets. */
#define BW_METADATA_SECTION_PE ".bwmeta"
/* The first bytes of the metadata, with its format version ("BWMETA1" and a NUL byte). */
#define BW_METADATA_MAGIC "BWMETA1"

/* ------------------------------------------------------------------------------------------------
 * Return values of a call (the int32_t every instance function returns)
 * --------------------------------------------------------------------------------------------- */

/* The output is filled in. */
#define BW_READY 0
/* The output's `task` must be started with task_start (the output's kind is BW_OUT_PENDING). */
#define BW_PENDING 1

/* ------------------------------------------------------------------------------------------------
 * BwOutput.kind
 * --------------------------------------------------------------------------------------------- */

/* Nothing (a zeroed output). */
#define BW_OUT_NONE 0u
/* Success without a value (instance_new, initialize, shutdown). */
#define BW_OUT_DONE 1u
/* A response in `response` (handle, after_response, an early answer of before_request). */
#define BW_OUT_RESPONSE 2u
/* before_request replaced the request with `request`; the chain goes on. */
#define BW_OUT_REQUEST 3u
/* before_request left the request as it was; the chain goes on. */
#define BW_OUT_CONTINUE 4u
/* An error: `code` is one of BW_ERR_*, `message` says what failed, and for BW_ERR_STATUS
 * `response.status` is the HTTP status to answer. */
#define BW_OUT_ERROR 5u
/* A health report: `code` is one of BW_HEALTH_*, `message` optional. */
#define BW_OUT_HEALTH 6u
/* The call is pending: `task` must be started (task_start) or dropped (task_cancel). */
#define BW_OUT_PENDING 7u
/* The plugin's config schema: JSON Schema text (UTF-8) in `message` (config_schema, ABI 1.1). */
#define BW_OUT_SCHEMA 8u
/* ABI 1.2, only from before_request_lent and after_response_lent: go on with the request
 * (before_request_lent, headers in `request.headers`) or response (after_response_lent, headers in
 * `response.headers`) the hook was lent, with these headers set: each name replaces every header of
 * that name (compared ignoring case), or is appended when there was none. */
#define BW_OUT_HEADERS 9u

/* ------------------------------------------------------------------------------------------------
 * Error codes (BwOutput.code when kind is BW_OUT_ERROR)
 * --------------------------------------------------------------------------------------------- */

/* The plugin failed for a reason of its own (HTTP 500). */
#define BW_ERR_INTERNAL 0u
/* The plugin panicked; `message` holds the panic message (HTTP 500). */
#define BW_ERR_PANIC 1u
/* The request is malformed (HTTP 400). */
#define BW_ERR_BAD_REQUEST 2u
/* The caller is not authenticated (HTTP 401). */
#define BW_ERR_UNAUTHORIZED 3u
/* The caller may not do this (HTTP 403). */
#define BW_ERR_FORBIDDEN 4u
/* No such resource (HTTP 404). */
#define BW_ERR_NOT_FOUND 5u
/* The plugin's configuration is invalid (HTTP 500, or a failed initialize). */
#define BW_ERR_CONFIG 6u
/* A dependency of the plugin is unavailable (HTTP 503). */
#define BW_ERR_UNAVAILABLE 7u
/* The task was cancelled before it finished. */
#define BW_ERR_CANCELLED 8u
/* Answer with the HTTP status in `response.status`. */
#define BW_ERR_STATUS 9u

/* ------------------------------------------------------------------------------------------------
 * Health codes (BwOutput.code when kind is BW_OUT_HEALTH)
 * --------------------------------------------------------------------------------------------- */

/* The plugin works. */
#define BW_HEALTH_HEALTHY 0u
/* The plugin works with reduced service. */
#define BW_HEALTH_DEGRADED 1u
/* The plugin does not work. */
#define BW_HEALTH_UNHEALTHY 2u

/* ------------------------------------------------------------------------------------------------
 * Log levels of BwHostServices.log, most severe first
 * --------------------------------------------------------------------------------------------- */

#define BW_LOG_ERROR 1u
#define BW_LOG_WARN 2u
#define BW_LOG_INFO 3u
#define BW_LOG_DEBUG 4u
#define BW_LOG_TRACE 5u

/* ------------------------------------------------------------------------------------------------
 * Data types
 * --------------------------------------------------------------------------------------------- */

/*
 * Borrowed bytes: `len` bytes at `ptr`. `ptr` may be dangling or NULL when `len` is 0, so never
 * dereference it (nor pass it to memcpy) without checking `len`. Usually UTF-8, never
 * NUL-terminated. Who owns the bytes is said by the struct that contains the BwStr.
 */
typedef struct BwStr {
    /* First byte. */
    const uint8_t *ptr;
    /* Number of bytes. */
    size_t len;
} BwStr;

/* A name and a value, both borrowed (owned by whoever owns the list that holds the pair). */
typedef struct BwKv {
    /* The name (header names are lower case). */
    BwStr key;
    /* The value. */
    BwStr value;
} BwKv;

/* A borrowed list of BwKv: `len` pairs at `ptr` (`ptr` may be dangling or NULL when `len` is 0). */
typedef struct BwKvList {
    /* First pair. */
    const BwKv *ptr;
    /* Number of pairs. */
    size_t len;
} BwKvList;

/*
 * An HTTP request, borrowed.
 *
 * Passed by the host to handle/before_request/after_response: the request and everything it points
 * to belong to the host and are valid for the duration of that call only; the plugin copies what it
 * keeps (also into a pending task). Written by the plugin into BwOutput.request (BW_OUT_REQUEST):
 * then everything belongs to the plugin until the output's `release`.
 */
typedef struct BwRequest {
    /* Method, upper case ("GET"). */
    BwStr method;
    /* Path without the query string ("/hello/ana"). */
    BwStr path;
    /* Values of the endpoint's {param} segments. */
    BwKvList params;
    /* Decoded query parameters in order. */
    BwKvList query;
    /* Headers in order, names in lower case. */
    BwKvList headers;
    /* Body bytes. */
    BwStr body;
} BwRequest;

/*
 * An HTTP response, borrowed.
 *
 * Passed by the host to after_response: borrowed for the duration of that call only. Written by the
 * plugin into BwOutput.response (BW_OUT_RESPONSE): belongs to the plugin until the output's
 * `release`.
 */
typedef struct BwResponse {
    /* HTTP status code. */
    uint16_t status;
    /* Headers in order. */
    BwKvList headers;
    /* Body bytes. */
    BwStr body;
} BwResponse;

/* Frees what a BwOutput points to. Called once by the host with the output's `owner`. */
typedef void (*BwReleaseFn)(void *owner);

/*
 * What a call produced. The host passes a zeroed one (kind BW_OUT_NONE, release NULL); the plugin
 * fills it in.
 *
 * Everything it points to (request, response, message, and the lists and bytes behind them) belongs
 * to the plugin until the host calls `release(owner)`, which the host does exactly once, after it
 * has copied what it needs, when `release` is not NULL. Pointing at static, immutable memory with
 * `release` NULL is fine. Fields that do not belong to `kind` are ignored (leave them zeroed).
 */
typedef struct BwOutput {
    /* One of the BW_OUT_* values. */
    uint32_t kind;
    /* BW_ERR_* for BW_OUT_ERROR, BW_HEALTH_* for BW_OUT_HEALTH, else 0. */
    uint32_t code;
    /* The replacement request of BW_OUT_REQUEST. Owned by the plugin until `release`. */
    BwRequest request;
    /* The response of BW_OUT_RESPONSE; `status` also carries BW_ERR_STATUS's status. Owned by the
     * plugin until `release`. */
    BwResponse response;
    /* Error or health message (UTF-8). Owned by the plugin until `release`. */
    BwStr message;
    /* The task of BW_OUT_PENDING, to pass to task_start (or to task_cancel to drop it). Owned by
     * the plugin; the host hands it back exactly once. */
    void *task;
    /* Passed to `release`. Owned by the plugin. */
    void *owner;
    /* Frees what this output points to; called once by the host. May be NULL. The plugin's own
     * function: the host never frees plugin memory with its own allocator. */
    BwReleaseFn release;
} BwOutput;

/* Called exactly once, from any thread, with a task's output. */
typedef void (*BwCompleteFn)(void *ctx, BwOutput *output);

/*
 * How a pending task reports its result. Provided by the host to task_start (by value).
 */
typedef struct BwCompletion {
    /* The host's context; passed back to `complete`. Owned by the host. */
    void *ctx;
    /* Called exactly once, from any thread, with the task's output (a BW_OUT_ERROR with
     * BW_ERR_CANCELLED if the task was cancelled). The host takes ownership of the output's
     * contents (it calls their `release` once); the BwOutput struct itself is only valid during
     * the call, so it may live on the plugin's stack. */
    BwCompleteFn complete;
} BwCompletion;

/* ABI 1.3: sets header `name` to `value` for a before_request_now or after_response_now call (see
 * BwHeaderSink). Returns 0, or nonzero when the host refuses the header. */
typedef int32_t (*BwHeaderSetFn)(void *ctx, BwStr name, BwStr value);

/*
 * ABI 1.3: where a hook call of before_request_now or after_response_now sends the headers it
 * sets, one at a time, so that they cross without an output of the plugin's to hold them and to
 * release. Provided by the host for the duration of the call only.
 */
typedef struct BwHeaderSink {
    /* The host's context; passed back to `set`. Owned by the host. */
    void *ctx;
    /* Sets header `name` to `value` on the request (before_request_now) or the response
     * (after_response_now) the call goes on with, in place of any header of that name (any case).
     * The host copies both strings before it returns; a later `set` of the same name adds a second
     * value. Returns 0, or nonzero when the host refuses the header (a name or value that is not
     * UTF-8): the plugin should then answer ERROR, and the host fails the call anyway. Called only
     * from the thread of the call, during the call; never unwinds. */
    BwHeaderSetFn set;
} BwHeaderSink;

/* Records one log line of the plugin. Thread-safe; never unwinds. The strings are borrowed for the
 * duration of the call only. */
typedef void (*BwLogFn)(void *ctx, uint32_t level, BwStr target, BwStr message);

/*
 * Services the host offers a plugin instance, passed to instance_new. The host owns it and keeps it
 * alive and unchanged until instance_free has returned; the plugin may keep the pointer until then
 * (and must not use it afterwards).
 */
typedef struct BwHostServices {
    /* sizeof(BwHostServices) as the host compiled it; fields past it do not exist. A v1.0 plugin
     * checks it is at least sizeof(BwHostServices) of v1.0 (48 bytes on 64-bit targets). */
    uint32_t size;
    /* The host's BW_ABI_MINOR. */
    uint16_t abi_minor;
    /* Padding, zero. */
    uint16_t reserved;
    /* The host's context; first argument of every function below. Owned by the host. */
    void *ctx;
    /* The name the operator gave this plugin instance in the config. Owned by the host, valid
     * until instance_free. */
    BwStr plugin_name;
    /* The most verbose BW_LOG_* level the host will record (0: none). */
    uint32_t max_log_level;
    /* Records one log line of the plugin. Thread-safe; never unwinds. May be NULL. */
    BwLogFn log;
    /* v1.2 (read only when size > 48): how many threads the plugin should run its waiting calls
     * on, as the operator configured it; 0: the plugin's default. A plugin of its own threads may
     * use it or ignore it. */
    uint32_t workers;
    /* v1.2: padding, zero. */
    uint32_t reserved2;
} BwHostServices;

/* sizeof(BwHostServices) of ABI 1.0 and 1.1, which ended with `log`: the least a plugin accepts
 * (`host->size >= BW_HOST_SERVICES_SIZE_V1_0`), reading the v1.2 fields only when `size` covers
 * them. */
#define BW_HOST_SERVICES_SIZE_V1_0 offsetof(BwHostServices, workers)

/* The most threads the Rust SDK starts for BwHostServices.workers; the host asks for no more. */
#define BW_MAX_WORKERS 64

/* Function types of BwPluginVTable. `instance` is what instance_new returned. */

/* Creates an instance. Returns NULL on failure, with the reason in `out` (BW_OUT_ERROR). */
typedef void *(*BwInstanceNewFn)(const BwHostServices *host, BwOutput *out);
/* Destroys an instance once no call on it is running or pending. */
typedef void (*BwInstanceFreeFn)(void *instance);
/* Initializes the instance with its config, a JSON document (borrowed for the call). Output: DONE
 * or ERROR. */
typedef int32_t (*BwInitializeFn)(void *instance, BwStr config_json, BwOutput *out);
/* Serves an endpoint. Output: RESPONSE or ERROR. */
typedef int32_t (*BwHandleFn)(void *instance, const BwRequest *request, BwOutput *out);
/* Runs before the endpoint. Output: CONTINUE, REQUEST, RESPONSE (answer early) or ERROR. */
typedef int32_t (*BwBeforeRequestFn)(void *instance, const BwRequest *request, BwOutput *out);
/* Runs after the endpoint. Output: RESPONSE (possibly changed) or ERROR. */
typedef int32_t (*BwAfterResponseFn)(void *instance, const BwRequest *request,
                                     const BwResponse *response, BwOutput *out);
/* Reports health. Output: HEALTH or ERROR. */
typedef int32_t (*BwHealthCheckFn)(void *instance, BwOutput *out);
/* Shuts the instance down. Output: DONE or ERROR. */
typedef int32_t (*BwShutdownFn)(void *instance, BwOutput *out);
/* Starts a pending task. The plugin calls `completion` exactly once. Returns a handle that the host
 * passes to task_cancel exactly once. */
typedef void *(*BwTaskStartFn)(void *task, BwCompletion completion);
/* Releases a task handle: cancels the task if it still runs (its completion then reports
 * BW_ERR_CANCELLED), else only frees the handle. Also accepts a never-started `task`. */
typedef void (*BwTaskCancelFn)(void *handle);
/* ABI 1.1: writes the JSON Schema of the plugin's config. Needs no instance. Output: SCHEMA (the
 * JSON text in `message`), DONE (no schema) or ERROR; returns BW_READY. */
typedef int32_t (*BwConfigSchemaFn)(BwOutput *out);
/* ABI 1.2: serves an endpoint like BwHandleFn, but the request is lent until the call is over (see
 * BwPluginVTable.handle_lent). Output: RESPONSE or ERROR. */
typedef int32_t (*BwHandleLentFn)(void *instance, const BwRequest *request, BwOutput *out);
/* ABI 1.2: runs before the endpoint like BwBeforeRequestFn, the request lent as to handle_lent.
 * Output: CONTINUE, HEADERS, REQUEST, RESPONSE (answer early) or ERROR. */
typedef int32_t (*BwBeforeRequestLentFn)(void *instance, const BwRequest *request, BwOutput *out);
/* ABI 1.2: runs after the endpoint like BwAfterResponseFn, request and response lent as the request
 * of handle_lent. Output: CONTINUE (unchanged), HEADERS, RESPONSE (instead) or ERROR. */
typedef int32_t (*BwAfterResponseLentFn)(void *instance, const BwRequest *request,
                                         const BwResponse *response, BwOutput *out);
/* ABI 1.3: before_request_lent as a call that never waits, its headers sent to `sink` (see
 * BwPluginVTable.before_request_now). Must return BW_READY. */
typedef int32_t (*BwBeforeRequestNowFn)(void *instance, const BwRequest *request,
                                        const BwHeaderSink *sink, BwOutput *out);
/* ABI 1.3: after_response_lent as a call that never waits, its headers sent to `sink` (see
 * BwPluginVTable.after_response_now). Must return BW_READY. */
typedef int32_t (*BwAfterResponseNowFn)(void *instance, const BwRequest *request,
                                        const BwResponse *response, const BwHeaderSink *sink,
                                        BwOutput *out);
/* ABI 1.4: handle_lent as a call that never waits, the request lent for the call only (see
 * BwPluginVTable.handle_now). Must return BW_READY. Output: RESPONSE or ERROR. */
typedef int32_t (*BwHandleNowFn)(void *instance, const BwRequest *request, BwOutput *out);

/*
 * The root of a plugin library, exported as the constant `backworks_plugin`.
 *
 * Plain data the host reads (magic, size, ABI version) before it calls any function of the plugin.
 * It and the metadata bytes it points to belong to the library and must never change.
 *
 * Every function pointer is nullable in the type; a plugin sets the ten of v1.0 (the host refuses
 * one that does not), while config_schema (v1.1), the *_lent entries (v1.2), the hooks' *_now
 * entries (v1.3) and handle_now (v1.4) may be NULL. A plugin must accept concurrent calls on one
 * instance from several threads. New fields are only ever appended
 * (and bump BW_ABI_MINOR).
 */
typedef struct BwPluginVTable {
    /* BW_ABI_MAGIC. */
    uint64_t magic;
    /* sizeof(BwPluginVTable) as the plugin compiled it. */
    uint32_t size;
    /* The plugin's BW_ABI_MAJOR. */
    uint16_t abi_major;
    /* The plugin's BW_ABI_MINOR. */
    uint16_t abi_minor;
    /* The same bytes as the metadata section (static, owned by the library). */
    BwStr metadata;
    /* Creates an instance; the host keeps `host` valid until instance_free returns. Returns the
     * plugin-owned instance (NULL on failure, with a BW_OUT_ERROR in `out`). */
    BwInstanceNewFn instance_new;
    /* Destroys an instance (the plugin frees what instance_new allocated) once no call on it is
     * running or pending. */
    BwInstanceFreeFn instance_free;
    /* Initializes the instance with its JSON config (borrowed for the call). Output: DONE or
     * ERROR. */
    BwInitializeFn initialize;
    /* Serves an endpoint; `request` is borrowed for the call. Output: RESPONSE or ERROR. */
    BwHandleFn handle;
    /* Runs before the endpoint; `request` is borrowed for the call. Output: CONTINUE, REQUEST,
     * RESPONSE (answer early) or ERROR. */
    BwBeforeRequestFn before_request;
    /* Runs after the endpoint; `request` and `response` are borrowed for the call (copy the
     * response to return it). Output: RESPONSE (possibly changed) or ERROR. */
    BwAfterResponseFn after_response;
    /* Reports health. Output: HEALTH or ERROR. */
    BwHealthCheckFn health_check;
    /* Shuts the instance down. Output: DONE or ERROR. */
    BwShutdownFn shutdown;
    /* Starts a pending task (owned by the plugin); the plugin calls `completion` exactly once.
     * Returns a plugin-owned handle the host passes to task_cancel exactly once. */
    BwTaskStartFn task_start;
    /* Releases a task handle (or a never-started task): cancels the task if it still runs, then
     * frees the plugin's task memory. */
    BwTaskCancelFn task_cancel;
    /* ABI 1.1, may be NULL: the JSON Schema of the plugin's config, computed when called. A C
     * plugin usually leaves it NULL and declares its schema in its metadata instead
     * (BW_PLUGIN_METADATA_SCHEMA), where the host reads it without loading the library. */
    BwConfigSchemaFn config_schema;
    /* ABI 1.2, may be NULL (then the host calls `handle`): serves an endpoint, reading the request
     * in place instead of copying it. The host keeps `request` and everything it points to valid
     * and unchanged until the call is over: until it returns BW_READY; if it returns BW_PENDING,
     * until the task's completion is called or task_cancel of the task (started or not) returns,
     * whichever comes first. So a task may keep pointers into the request instead of copies, but
     * it must stop reading them before it calls the completion, and task_cancel must not return
     * while the task could still read them. Output: RESPONSE or ERROR. */
    BwHandleLentFn handle_lent;
    /* ABI 1.2, may be NULL (then the host calls before_request): before_request reading the request
     * in place, lent as to handle_lent. Output: CONTINUE, HEADERS (set these request headers and go
     * on), REQUEST, RESPONSE (answer early) or ERROR. */
    BwBeforeRequestLentFn before_request_lent;
    /* ABI 1.2, may be NULL (then the host calls after_response): after_response reading the request
     * and the response in place, both lent as to handle_lent. Output: CONTINUE (the response goes
     * on unchanged), HEADERS (set these response headers; status and body stay), RESPONSE (this
     * one instead) or ERROR. */
    BwAfterResponseLentFn after_response_lent;
    /* ABI 1.3, may be NULL (then the host calls before_request_lent): before_request_lent as a call
     * that never waits. It must return BW_READY (the host treats anything else as the plugin's
     * error and starts no task); the request is lent for the call only. The request headers it
     * sets go to `sink`. Output: CONTINUE (go on, with the headers given to `sink` set), HEADERS
     * (as from before_request_lent, set after those given to `sink`), REQUEST, RESPONSE (answer
     * early) or ERROR. */
    BwBeforeRequestNowFn before_request_now;
    /* ABI 1.3, may be NULL (then the host calls after_response_lent): after_response_lent as a call
     * that never waits (see before_request_now); request and response lent for the call only, the
     * response headers it sets sent to `sink`. Output: CONTINUE (the response goes on, with the
     * headers given to `sink` set), HEADERS, RESPONSE (this one instead) or ERROR. */
    BwAfterResponseNowFn after_response_now;
    /* ABI 1.4, may be NULL (then the host calls handle_lent, or handle): handle_lent as a call
     * that never waits. It must return BW_READY (the host treats anything else as the plugin's
     * error and starts no task); the request is lent for the call only, so the host lends it from
     * its stack and makes the call without a future. Output: RESPONSE or ERROR. An endpoint that
     * never waits may set handle_lent to the same function, for hosts of 1.2 and 1.3. */
    BwHandleNowFn handle_now;
} BwPluginVTable;

/* sizeof(BwPluginVTable) of ABI 1.0 (64-bit targets), which ended with task_cancel: a plugin built
 * against a 1.0 header exports a vtable of this size, and a 1.4 host still loads it. */
#define BW_VTABLE_SIZE_V1_0 offsetof(BwPluginVTable, config_schema)
/* sizeof(BwPluginVTable) of ABI 1.1, which ended with config_schema. */
#define BW_VTABLE_SIZE_V1_1 offsetof(BwPluginVTable, handle_lent)
/* sizeof(BwPluginVTable) of ABI 1.2, which ended with after_response_lent. */
#define BW_VTABLE_SIZE_V1_2 offsetof(BwPluginVTable, before_request_now)
/* sizeof(BwPluginVTable) of ABI 1.3, which ended with after_response_now. */
#define BW_VTABLE_SIZE_V1_3 offsetof(BwPluginVTable, handle_now)

/* ------------------------------------------------------------------------------------------------
 * Helpers
 * --------------------------------------------------------------------------------------------- */

/* A BwStr over `len` bytes at `ptr` (borrowed: valid while the bytes are). */
static inline BwStr bw_str(const void *ptr, size_t len) {
    BwStr s;
    s.ptr = (const uint8_t *)ptr;
    s.len = len;
    return s;
}

/* A BwStr over a string literal, without its terminating NUL. */
#define BW_STR_LIT(literal) bw_str((literal), sizeof(literal) - 1)

/* The same as an initializer, for a static or a const at file scope:
 *     static const BwKv CONTENT_TYPE = {BW_STR_INIT("content-type"), BW_STR_INIT("text/plain")}; */
#define BW_STR_INIT(literal) {(const uint8_t *)(literal), sizeof(literal) - 1}

/* Whether `a` and `b` hold the same bytes. */
static inline int bw_str_eq(BwStr a, BwStr b) {
    if (a.len != b.len) {
        return 0;
    }
    for (size_t i = 0; i < a.len; i++) {
        if (a.ptr[i] != b.ptr[i]) {
            return 0;
        }
    }
    return 1;
}

/* Whether `a` and `b` are the same text ignoring ASCII case, as header names are compared. */
static inline int bw_str_eq_ignore_case(BwStr a, BwStr b) {
    if (a.len != b.len) {
        return 0;
    }
    for (size_t i = 0; i < a.len; i++) {
        uint8_t x = a.ptr[i], y = b.ptr[i];
        if (x >= 'A' && x <= 'Z') {
            x = (uint8_t)(x + ('a' - 'A'));
        }
        if (y >= 'A' && y <= 'Z') {
            y = (uint8_t)(y + ('a' - 'A'));
        }
        if (x != y) {
            return 0;
        }
    }
    return 1;
}

/* The value of the first pair of `list` named `name` (ignoring ASCII case), or NULL: a header of a
 * lent request or response (`bw_header_get(request->headers, BW_STR_LIT("x-api-key"))`). The
 * value is borrowed as the list is. */
static inline const BwStr *bw_header_get(BwKvList list, BwStr name) {
    for (size_t i = 0; i < list.len; i++) {
        if (bw_str_eq_ignore_case(list.ptr[i].key, name)) {
            return &list.ptr[i].value;
        }
    }
    return NULL;
}

/* Fills `out` (wholly) with an error: `code` (BW_ERR_*) and `message`, a NUL-terminated string
 * that must outlive the output (a string literal): nothing to release. */
static inline void bw_error(BwOutput *out, uint32_t code, const char *message) {
    memset(out, 0, sizeof *out);
    out->kind = BW_OUT_ERROR;
    out->code = code;
    out->message = bw_str(message, strlen(message));
}

/* Frees the one block an output of bw_respond owns. It is compiled into the plugin with this
 * header, so the block goes back to the plugin's own allocator. */
static inline void bw_release_block(void *owner) {
    free(owner);
}

/* Adds `more` to `*total`; 0 when the sum would overflow. (bw_respond's.) */
static inline int bw_add_size_(size_t *total, size_t more) {
    if (more > SIZE_MAX - *total) {
        return 0;
    }
    *total += more;
    return 1;
}

/* Copies `from` to `*cursor` and moves the cursor past the copy. (bw_respond's.) */
static inline BwStr bw_copy_str_(char **cursor, BwStr from) {
    char *at = *cursor;
    if (from.len == 0) {
        return bw_str(NULL, 0);
    }
    memcpy(at, from.ptr, from.len);
    *cursor = at + from.len;
    return bw_str(at, from.len);
}

/*
 * Fills `out` (wholly) with a response (BW_OUT_RESPONSE): `status`, the `n` header pairs at
 * `headers` and the `body_len` bytes at `body`, all copied into one malloc'd block that the output
 * owns and the host frees through bw_release_block. So the arguments may be borrowed (a lent
 * request's or response's headers, a buffer on the stack) and are not used after the call:
 *
 *     static const BwKv TEXT[] = { {BW_STR_INIT("content-type"), BW_STR_INIT("text/plain")} };
 *     char body[64];
 *     int len = snprintf(body, sizeof body, "%u items", count);
 *     if (len < 0 || (size_t)len >= sizeof body) {   // snprintf failed or cut the text short
 *         bw_error(out, BW_ERR_INTERNAL, "cannot format the answer");
 *         return BW_READY;
 *     }
 *     bw_respond(out, 200, TEXT, 1, body, (size_t)len);
 *     return BW_READY;
 *
 * `headers` may be NULL when `n` is 0, `body` when `body_len` is 0. Returns 1; when the sizes
 * overflow or memory runs out, fills `out` with a BW_ERR_INTERNAL error instead (nothing copied)
 * and returns 0. Either way the call can return BW_READY with `out`.
 */
static inline int bw_respond(BwOutput *out, uint16_t status, const BwKv *headers, size_t n,
                             const void *body, size_t body_len) {
    size_t total = 0, i;
    BwKv *block;
    char *cursor;
    int fits = n <= SIZE_MAX / sizeof(BwKv);
    if (fits) {
        total = n * sizeof(BwKv);
    }
    for (i = 0; fits && i < n; i++) {
        fits = bw_add_size_(&total, headers[i].key.len) && bw_add_size_(&total, headers[i].value.len);
    }
    /* One byte more, so that an empty response is not malloc(0). */
    if (!fits || !bw_add_size_(&total, body_len) || !bw_add_size_(&total, 1)) {
        bw_error(out, BW_ERR_INTERNAL, "response too large");
        return 0;
    }
    block = (BwKv *)malloc(total);
    if (block == NULL) {
        bw_error(out, BW_ERR_INTERNAL, "out of memory");
        return 0;
    }
    cursor = (char *)(block + n);
    for (i = 0; i < n; i++) {
        block[i].key = bw_copy_str_(&cursor, headers[i].key);
        block[i].value = bw_copy_str_(&cursor, headers[i].value);
    }
    memset(out, 0, sizeof *out);
    out->kind = BW_OUT_RESPONSE;
    out->response.status = status;
    out->response.headers.ptr = n ? block : NULL;
    out->response.headers.len = n;
    out->response.body = bw_copy_str_(&cursor, bw_str(body, body_len));
    out->owner = block;
    out->release = bw_release_block;
    return 1;
}

/* Turns a macro's value into a string literal. */
#define BW_STRINGIFY_(x) #x
#define BW_STRINGIFY(x) BW_STRINGIFY_(x)

/* Makes a symbol visible outside the shared library (also under -fvisibility=hidden). */
#if defined(_WIN32) || defined(__CYGWIN__)
#define BW_EXPORT __declspec(dllexport)
#elif defined(__GNUC__) || defined(__clang__)
#define BW_EXPORT __attribute__((visibility("default")))
#else
#define BW_EXPORT
#endif

/* Places the metadata in its section and keeps it even if nothing references it (GCC/Clang). */
#if defined(__APPLE__)
#define BW_METADATA_ATTRIBUTES __attribute__((section(BW_METADATA_SECTION_MACHO), used))
#elif defined(_WIN32) || defined(__CYGWIN__)
#define BW_METADATA_ATTRIBUTES __attribute__((section(BW_METADATA_SECTION_PE), used))
#else
#define BW_METADATA_ATTRIBUTES __attribute__((section(BW_METADATA_SECTION), used))
#endif

/*
 * BW_PLUGIN_METADATA_FULL(abi, sdk, name, version, description, panic) defines the metadata section
 * with every key given as a string literal. Plugins use BW_PLUGIN_METADATA; this one exists for
 * tests that need wrong values. It defines the static array `bw_plugin_metadata`; the array's size
 * (its implicit final NUL included) is the metadata's length, as BW_METADATA_STR uses it.
 *
 * The format (plugin-sdk/src/metadata.rs): "BWMETA1" NUL, then "key=value" entries each ended by a
 * NUL, then an empty entry (one more NUL, here the literal's implicit one). Values must not contain
 * NUL bytes. Each "\0" ends its own literal, so a value that starts with a digit cannot turn it into
 * an octal escape: escapes are decoded before adjacent literals are joined.
 */
#define BW_PLUGIN_METADATA_FULL(abi, sdk, name, version, description, panic)                        \
    BW_METADATA_ATTRIBUTES static const char bw_plugin_metadata[] =                                  \
        BW_METADATA_MAGIC "\0"                                                                      \
        "abi=" abi "\0"                                                                             \
        "sdk=" sdk "\0"                                                                             \
        "name=" name "\0"                                                                           \
        "version=" version "\0"                                                                     \
        "description=" description "\0"                                                             \
        "panic=" panic "\0"

/*
 * BW_PLUGIN_METADATA(name, version, description) defines the metadata section of a plugin built
 * against this header: abi=BW_ABI_MAJOR.BW_ABI_MINOR, sdk=BW_SDK_VERSION, panic=unwind. Arguments
 * are string literals; use it once, at file scope, before BW_EXPORT_VTABLE.
 *
 * Why panic=unwind: the `panic` key tells the host whether a Rust panic inside the plugin unwinds
 * (and is caught by the plugin's shims and returned as BW_ERR_PANIC) or aborts the whole process;
 * the host refuses `panic=abort` plugins in process. C code has no panics and no unwinding, so
 * nothing can abort the host through that path: a C plugin declares `unwind`. (A C plugin must
 * still never let a C++ exception or a longjmp cross the boundary.)
 */
#define BW_PLUGIN_METADATA(name, version, description)                                              \
    BW_PLUGIN_METADATA_FULL(BW_STRINGIFY(BW_ABI_MAJOR) "." BW_STRINGIFY(BW_ABI_MINOR),              \
                            BW_SDK_VERSION, name, version, description, "unwind")

/*
 * BW_PLUGIN_METADATA_HOOKS(name, version, description, hooks) is BW_PLUGIN_METADATA plus the hooks
 * the plugin implements, as a comma-separated string literal: "before_request",
 * "after_response", "before_request,after_response", or "" for none. The host checks an
 * operator's `hooks:` list against it without loading the library (a hook listed but not
 * declared is a config error; a declared before_request left unsubscribed is a warning). A plugin
 * that uses BW_PLUGIN_METADATA declares nothing, and the host cannot check its hooks.
 */
#define BW_PLUGIN_METADATA_HOOKS(name, version, description, hooks)                                 \
    BW_METADATA_ATTRIBUTES static const char bw_plugin_metadata[] =                                  \
        BW_METADATA_MAGIC "\0"                                                                      \
        "abi=" BW_STRINGIFY(BW_ABI_MAJOR) "." BW_STRINGIFY(BW_ABI_MINOR) "\0"                        \
        "sdk=" BW_SDK_VERSION "\0"                                                                  \
        "name=" name "\0"                                                                           \
        "version=" version "\0"                                                                     \
        "description=" description "\0"                                                             \
        "panic=unwind\0"                                                                            \
        "hooks=" hooks "\0"

/*
 * BW_PLUGIN_METADATA_SCHEMA(name, version, description, hooks, schema) is BW_PLUGIN_METADATA_HOOKS
 * plus the JSON Schema of the plugin's config, as a string literal of JSON text (at most 32 KiB).
 * The host checks the operator's `config:` against it before initialize, and `backworks validate`
 * without loading the library; a `${VAR}` whose schema type is a number or a boolean arrives as
 * one. BW_JSON writes the literal from JSON written as it is:
 *
 *     BW_PLUGIN_METADATA_SCHEMA("c-hello", "0.1.0", "greets", "",
 *         BW_JSON({"type": "object", "properties": {"greeting": {"type": "string"}}}));
 */
#define BW_PLUGIN_METADATA_SCHEMA(name, version, description, hooks, schema)                        \
    BW_METADATA_ATTRIBUTES static const char bw_plugin_metadata[] =                                  \
        BW_METADATA_MAGIC "\0"                                                                      \
        "abi=" BW_STRINGIFY(BW_ABI_MAJOR) "." BW_STRINGIFY(BW_ABI_MINOR) "\0"                        \
        "sdk=" BW_SDK_VERSION "\0"                                                                  \
        "name=" name "\0"                                                                           \
        "version=" version "\0"                                                                     \
        "description=" description "\0"                                                             \
        "panic=unwind\0"                                                                            \
        "hooks=" hooks "\0"                                                                         \
        "config_schema=" schema "\0"

/* Turns JSON written in the source into a string literal of it (the preprocessor escapes its
 * quotes; runs of white space become one space). */
#define BW_JSON(...) #__VA_ARGS__

/* The metadata defined by BW_PLUGIN_METADATA as a BwStr, for BwPluginVTable.metadata (a constant
 * initializer). */
#define BW_METADATA_STR { (const uint8_t *)bw_plugin_metadata, sizeof(bw_plugin_metadata) }

/*
 * The first fields of a vtable (magic, size, version, metadata), as designated initializers:
 *
 *     BW_EXPORT_VTABLE = { BW_VTABLE_HEADER, .instance_new = ..., ... };
 */
#define BW_VTABLE_HEADER                                                                            \
    .magic = BW_ABI_MAGIC, .size = (uint32_t)sizeof(BwPluginVTable), .abi_major = BW_ABI_MAJOR,     \
    .abi_minor = BW_ABI_MINOR, .metadata = BW_METADATA_STR

/*
 * Declares the exported vtable `backworks_plugin`, with default visibility and C linkage; follow it
 * with `= { ... };`. In C++ (where designated initializers need C++20 and field order) the
 * `extern "C"` keeps the name unmangled and the constant's linkage external.
 */
#ifdef __cplusplus
#define BW_EXPORT_VTABLE extern "C" BW_EXPORT const BwPluginVTable backworks_plugin
#else
#define BW_EXPORT_VTABLE BW_EXPORT const BwPluginVTable backworks_plugin
#endif

/* ------------------------------------------------------------------------------------------------
 * Layout checks: the same figures as abi.rs's `layout_is_stable` test (64-bit targets). If one
 * fails, the header and abi.rs disagree.
 * --------------------------------------------------------------------------------------------- */

#if defined(__cplusplus) && __cplusplus >= 201103L
#define BW_STATIC_ASSERT(cond, msg) static_assert(cond, msg)
#define BW_ALIGNOF(type) alignof(type)
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#define BW_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#define BW_ALIGNOF(type) _Alignof(type)
#endif

#if defined(BW_STATIC_ASSERT) && defined(UINTPTR_MAX) && UINTPTR_MAX == 0xFFFFFFFFFFFFFFFFu
BW_STATIC_ASSERT(sizeof(BwStr) == 16, "BwStr size");
BW_STATIC_ASSERT(sizeof(BwKv) == 32, "BwKv size");
BW_STATIC_ASSERT(sizeof(BwKvList) == 16, "BwKvList size");
BW_STATIC_ASSERT(sizeof(BwRequest) == 96, "BwRequest size");
BW_STATIC_ASSERT(offsetof(BwRequest, path) == 16, "BwRequest.path offset");
BW_STATIC_ASSERT(offsetof(BwRequest, params) == 32, "BwRequest.params offset");
BW_STATIC_ASSERT(offsetof(BwRequest, query) == 48, "BwRequest.query offset");
BW_STATIC_ASSERT(offsetof(BwRequest, headers) == 64, "BwRequest.headers offset");
BW_STATIC_ASSERT(offsetof(BwRequest, body) == 80, "BwRequest.body offset");
BW_STATIC_ASSERT(sizeof(BwResponse) == 40, "BwResponse size");
BW_STATIC_ASSERT(offsetof(BwResponse, headers) == 8, "BwResponse.headers offset");
BW_STATIC_ASSERT(offsetof(BwResponse, body) == 24, "BwResponse.body offset");
/* 184 = offset of release (176) + 8: what rustc computes for abi.rs's BwOutput (abi.rs's layout test
 * must say the same). */
BW_STATIC_ASSERT(sizeof(BwOutput) == 184, "BwOutput size");
BW_STATIC_ASSERT(offsetof(BwOutput, code) == 4, "BwOutput.code offset");
BW_STATIC_ASSERT(offsetof(BwOutput, request) == 8, "BwOutput.request offset");
BW_STATIC_ASSERT(offsetof(BwOutput, response) == 104, "BwOutput.response offset");
BW_STATIC_ASSERT(offsetof(BwOutput, message) == 144, "BwOutput.message offset");
BW_STATIC_ASSERT(offsetof(BwOutput, task) == 160, "BwOutput.task offset");
BW_STATIC_ASSERT(offsetof(BwOutput, owner) == 168, "BwOutput.owner offset");
BW_STATIC_ASSERT(offsetof(BwOutput, release) == 176, "BwOutput.release offset");
BW_STATIC_ASSERT(sizeof(BwCompletion) == 16, "BwCompletion size");
BW_STATIC_ASSERT(sizeof(BwHostServices) == 56, "BwHostServices size");
BW_STATIC_ASSERT(offsetof(BwHostServices, ctx) == 8, "BwHostServices.ctx offset");
BW_STATIC_ASSERT(offsetof(BwHostServices, plugin_name) == 16, "BwHostServices.plugin_name offset");
BW_STATIC_ASSERT(offsetof(BwHostServices, max_log_level) == 32, "BwHostServices.max_log_level offset");
BW_STATIC_ASSERT(offsetof(BwHostServices, log) == 40, "BwHostServices.log offset");
BW_STATIC_ASSERT(offsetof(BwHostServices, workers) == 48, "BwHostServices.workers offset");
BW_STATIC_ASSERT(BW_HOST_SERVICES_SIZE_V1_0 == 48, "BwHostServices size of v1.0");
BW_STATIC_ASSERT(offsetof(BwHostServices, reserved2) == 52, "BwHostServices.reserved2 offset");
BW_STATIC_ASSERT(sizeof(BwHeaderSink) == 16, "BwHeaderSink size");
BW_STATIC_ASSERT(offsetof(BwHeaderSink, set) == 8, "BwHeaderSink.set offset");
BW_STATIC_ASSERT(sizeof(BwPluginVTable) == 168, "BwPluginVTable size");
BW_STATIC_ASSERT(BW_VTABLE_SIZE_V1_0 == 112, "BwPluginVTable size of ABI 1.0");
BW_STATIC_ASSERT(BW_VTABLE_SIZE_V1_1 == 120, "BwPluginVTable size of ABI 1.1");
BW_STATIC_ASSERT(BW_VTABLE_SIZE_V1_2 == 144, "BwPluginVTable size of ABI 1.2");
BW_STATIC_ASSERT(BW_VTABLE_SIZE_V1_3 == 160, "BwPluginVTable size of ABI 1.3");
BW_STATIC_ASSERT(BW_ALIGNOF(BwPluginVTable) == 8, "BwPluginVTable alignment");
BW_STATIC_ASSERT(offsetof(BwPluginVTable, size) == 8, "BwPluginVTable.size offset");
BW_STATIC_ASSERT(offsetof(BwPluginVTable, abi_major) == 12, "BwPluginVTable.abi_major offset");
BW_STATIC_ASSERT(offsetof(BwPluginVTable, abi_minor) == 14, "BwPluginVTable.abi_minor offset");
BW_STATIC_ASSERT(offsetof(BwPluginVTable, metadata) == 16, "BwPluginVTable.metadata offset");
BW_STATIC_ASSERT(offsetof(BwPluginVTable, instance_new) == 32, "BwPluginVTable.instance_new offset");
BW_STATIC_ASSERT(offsetof(BwPluginVTable, instance_free) == 40, "BwPluginVTable.instance_free offset");
BW_STATIC_ASSERT(offsetof(BwPluginVTable, initialize) == 48, "BwPluginVTable.initialize offset");
BW_STATIC_ASSERT(offsetof(BwPluginVTable, handle) == 56, "BwPluginVTable.handle offset");
BW_STATIC_ASSERT(offsetof(BwPluginVTable, before_request) == 64, "BwPluginVTable.before_request offset");
BW_STATIC_ASSERT(offsetof(BwPluginVTable, after_response) == 72, "BwPluginVTable.after_response offset");
BW_STATIC_ASSERT(offsetof(BwPluginVTable, health_check) == 80, "BwPluginVTable.health_check offset");
BW_STATIC_ASSERT(offsetof(BwPluginVTable, shutdown) == 88, "BwPluginVTable.shutdown offset");
BW_STATIC_ASSERT(offsetof(BwPluginVTable, task_start) == 96, "BwPluginVTable.task_start offset");
BW_STATIC_ASSERT(offsetof(BwPluginVTable, task_cancel) == 104, "BwPluginVTable.task_cancel offset");
BW_STATIC_ASSERT(offsetof(BwPluginVTable, config_schema) == 112, "BwPluginVTable.config_schema offset");
BW_STATIC_ASSERT(offsetof(BwPluginVTable, handle_lent) == 120, "BwPluginVTable.handle_lent offset");
BW_STATIC_ASSERT(offsetof(BwPluginVTable, before_request_lent) == 128,
                 "BwPluginVTable.before_request_lent offset");
BW_STATIC_ASSERT(offsetof(BwPluginVTable, after_response_lent) == 136,
                 "BwPluginVTable.after_response_lent offset");
BW_STATIC_ASSERT(offsetof(BwPluginVTable, before_request_now) == 144,
                 "BwPluginVTable.before_request_now offset");
BW_STATIC_ASSERT(offsetof(BwPluginVTable, after_response_now) == 152,
                 "BwPluginVTable.after_response_now offset");
BW_STATIC_ASSERT(offsetof(BwPluginVTable, handle_now) == 160, "BwPluginVTable.handle_now offset");
#endif

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* BACKWORKS_PLUGIN_H */
