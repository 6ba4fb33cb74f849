/* The host must refuse this library: its metadata says sdk=1.0.0, a newer SDK major than the host's
 * 0.1.0 family (ABI, magic and vtable are all fine). */
#include "stubs.h"

BW_PLUGIN_METADATA_FULL(BW_STRINGIFY(BW_ABI_MAJOR) "." BW_STRINGIFY(BW_ABI_MINOR), "1.0.0",
                        "broken-newer-sdk", "0.1.0", "fixture: built with SDK 1.0.0", "unwind");

BW_EXPORT_VTABLE = {
    BW_VTABLE_HEADER,
    STUB_FUNCTIONS,
};
