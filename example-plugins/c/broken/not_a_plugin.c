/* The host must refuse this library: it is a plain shared library, with no .backworks_meta section
 * and no `backworks_plugin` symbol (it must say "not a Backworks plugin", and never dlopen it). */
int add(int a, int b);

int add(int a, int b) {
    return a + b;
}
