/* Counts every allocation call of the process it is preloaded into (LD_PRELOAD), for
 * `benches/host_path.rs`: the host's allocations and also those of a plugin library, whose Rust
 * code allocates through its own global allocator, straight from the C library, where the bench's
 * counting global allocator cannot see them. `backworks_bench_allocations()` reads the count.
 *
 * Each function forwards to the next definition (the C library's), found with dlsym(RTLD_NEXT),
 * which may itself allocate: calls made while the symbols are being resolved are served from a
 * small static buffer that `free` then ignores. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <string.h>

static unsigned long long allocations;

static void *(*next_malloc)(size_t);
static void *(*next_calloc)(size_t, size_t);
static void *(*next_realloc)(void *, size_t);
static void (*next_free)(void *);
static int (*next_posix_memalign)(void **, size_t, size_t);
static void *(*next_aligned_alloc)(size_t, size_t);
static void *(*next_memalign)(size_t, size_t);

static _Alignas(16) char boot[8192];
static size_t boot_used;
static int resolving;

static void *boot_alloc(size_t n) {
    n = (n + 15) & ~(size_t)15;
    if (n > sizeof boot - boot_used) {
        return NULL;
    }
    void *p = boot + boot_used;
    boot_used += n;
    return p;
}

static int in_boot(const void *p) {
    return (const char *)p >= boot && (const char *)p < boot + sizeof boot;
}

static void resolve(void) {
    resolving = 1;
    next_calloc = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "calloc");
    next_realloc = (void *(*)(void *, size_t))dlsym(RTLD_NEXT, "realloc");
    next_free = (void (*)(void *))dlsym(RTLD_NEXT, "free");
    next_posix_memalign = (int (*)(void **, size_t, size_t))dlsym(RTLD_NEXT, "posix_memalign");
    next_aligned_alloc = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "aligned_alloc");
    next_memalign = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "memalign");
    next_malloc = (void *(*)(size_t))dlsym(RTLD_NEXT, "malloc");
    resolving = 0;
}

static void count(void) {
    __atomic_add_fetch(&allocations, 1, __ATOMIC_RELAXED);
}

unsigned long long backworks_bench_allocations(void) {
    return __atomic_load_n(&allocations, __ATOMIC_RELAXED);
}

void *malloc(size_t n) {
    if (next_malloc == NULL) {
        if (resolving) {
            return boot_alloc(n);
        }
        resolve();
    }
    count();
    return next_malloc(n);
}

void *calloc(size_t items, size_t size) {
    if (next_malloc == NULL) {
        if (resolving) {
            return boot_alloc(items * size); /* static: already zero */
        }
        resolve();
    }
    count();
    return next_calloc(items, size);
}

void *realloc(void *p, size_t n) {
    if (next_malloc == NULL) {
        resolve();
    }
    count();
    if (in_boot(p)) {
        void *q = next_malloc(n);
        if (q != NULL) {
            size_t room = (size_t)(boot + sizeof boot - (char *)p);
            memcpy(q, p, n < room ? n : room);
        }
        return q;
    }
    return next_realloc(p, n);
}

void free(void *p) {
    if (p == NULL || in_boot(p)) {
        return;
    }
    if (next_free == NULL) {
        resolve();
    }
    next_free(p);
}

int posix_memalign(void **out, size_t align, size_t n) {
    if (next_malloc == NULL) {
        resolve();
    }
    count();
    return next_posix_memalign(out, align, n);
}

void *aligned_alloc(size_t align, size_t n) {
    if (next_malloc == NULL) {
        resolve();
    }
    count();
    return next_aligned_alloc(align, n);
}

void *memalign(size_t align, size_t n) {
    if (next_malloc == NULL) {
        resolve();
    }
    count();
    return next_memalign(align, n);
}
