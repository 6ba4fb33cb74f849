/* The host must refuse to load this library in process: its metadata says panic=abort (a panic
 * would abort the whole host), which the metadata alone shows. Everything else is valid. */
#include "stubs.h"

BW_PLUGIN_METADATA_FULL(BW_STRINGIFY(BW_ABI_MAJOR) "." BW_STRINGIFY(BW_ABI_MINOR), BW_SDK_VERSION,
                        "broken-panic-abort", "0.1.0", "fixture: built with panic=abort", "abort");

BW_EXPORT_VTABLE = {
    BW_VTABLE_HEADER,
    STUB_FUNCTIONS,
};
