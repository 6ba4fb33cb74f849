/* Proves that inspection never runs library code: the metadata section is valid (abi=1.0,
 * sdk=0.1.0, panic=unwind), and a library constructor creates the file named by the environment
 * variable BACKWORKS_MARKER, if set, when the library is mapped for execution (dlopen). Reading the
 * metadata must leave no marker; loading it does (and then fails: there is no `backworks_plugin`
 * symbol, so the host refuses it with "does not export `backworks_plugin`" after dlopen). */
#include <backworks_plugin.h>

#include <stdio.h>
#include <stdlib.h>

BW_PLUGIN_METADATA("broken-constructor-marker", "0.1.0",
                   "fixture: a constructor that leaves a marker file when the library is loaded");

/* Runs when the dynamic loader maps the library (never when a file reader parses it). */
__attribute__((constructor)) static void constructor_marker(void) {
    const char *path = getenv("BACKWORKS_MARKER");
    if (path == NULL || path[0] == '\0') {
        return;
    }
    FILE *marker = fopen(path, "w");
    if (marker != NULL) {
        fputs("constructor ran\n", marker);
        fclose(marker);
    }
}
