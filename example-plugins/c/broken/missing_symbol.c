/* The host must refuse this library: its metadata section is valid, but it exports no
 * `backworks_plugin` symbol (the vtable is exported as `bw_vtable` instead), so dlsym fails. */
#include "stubs.h"

BW_PLUGIN_METADATA("broken-missing-symbol", "0.1.0", "fixture: no backworks_plugin symbol");

/* A valid vtable under the wrong name: the only difference from a valid plugin. */
BW_EXPORT const BwPluginVTable bw_vtable = {
    BW_VTABLE_HEADER,
    STUB_FUNCTIONS,
};
