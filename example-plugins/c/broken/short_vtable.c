/* The host must refuse this library: its vtable's size field says 96 bytes (it ends before
 * task_start), less than the 112 bytes of an ABI v1.0 vtable, though the metadata says abi=1.0. */
#include "stubs.h"

#include <stddef.h>

BW_PLUGIN_METADATA("broken-short-vtable", "0.1.0", "fixture: vtable size too small");

BW_EXPORT_VTABLE = {
    .magic = BW_ABI_MAGIC,
    /* The only difference from a valid plugin. (The struct in memory is still whole, so a host that
     * wrongly reads past `size` reads stubs, not garbage.) */
    .size = (uint32_t)offsetof(BwPluginVTable, task_start),
    .abi_major = BW_ABI_MAJOR,
    .abi_minor = BW_ABI_MINOR,
    .metadata = BW_METADATA_STR,
    STUB_FUNCTIONS,
};
