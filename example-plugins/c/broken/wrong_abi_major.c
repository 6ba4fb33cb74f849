/* The host must refuse this library: it was built for ABI 2.0 (metadata abi=2.0, vtable abi_major 2)
 * and the host speaks ABI major 1 only; the metadata alone is enough to say so. */
#include "stubs.h"

BW_PLUGIN_METADATA_FULL("2.0", BW_SDK_VERSION, "broken-wrong-abi-major", "0.1.0",
                        "fixture: built for ABI major 2", "unwind");

BW_EXPORT_VTABLE = {
    .magic = BW_ABI_MAGIC,
    .size = (uint32_t)sizeof(BwPluginVTable),
    .abi_major = 2, /* with abi=2.0 in the metadata: the only difference from a valid plugin */
    .abi_minor = 0,
    .metadata = BW_METADATA_STR,
    STUB_FUNCTIONS,
};
