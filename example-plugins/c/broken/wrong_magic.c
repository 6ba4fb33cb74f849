/* The host must refuse this library: its vtable's magic is 0xdeadbeefdeadbeef, not BW_ABI_MAGIC
 * ("BWPLUGIN", 0x4e4947554c505742), so `backworks_plugin` is not a Backworks vtable. */
#include "stubs.h"

BW_PLUGIN_METADATA("broken-wrong-magic", "0.1.0", "fixture: vtable magic is wrong");

BW_EXPORT_VTABLE = {
    .magic = UINT64_C(0xDEADBEEFDEADBEEF), /* the only difference from a valid plugin */
    .size = (uint32_t)sizeof(BwPluginVTable),
    .abi_major = BW_ABI_MAJOR,
    .abi_minor = BW_ABI_MINOR,
    .metadata = BW_METADATA_STR,
    STUB_FUNCTIONS,
};
