/* The host must refuse this library: it has no .backworks_meta section, so there is no metadata to
 * inspect without running it (the vtable itself is valid and points at valid metadata bytes that
 * merely live in .rodata). */
#include "stubs.h"

/* Valid metadata bytes, but not in the metadata section: no BW_PLUGIN_METADATA. */
static const char bw_plugin_metadata[] = "BWMETA1\0"
                                         "abi=1.0\0"
                                         "sdk=" BW_SDK_VERSION "\0"
                                         "name=broken-no-metadata\0"
                                         "version=0.1.0\0"
                                         "description=fixture: no metadata section\0"
                                         "panic=unwind\0";

BW_EXPORT_VTABLE = {
    BW_VTABLE_HEADER,
    STUB_FUNCTIONS,
};
