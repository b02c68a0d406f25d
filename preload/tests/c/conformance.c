/* The malloc family under libfarmem_preload.so, on both sides of FARMEM_THRESHOLD (the test sets 64K).
 * Prints "conformance ok" and exits 0, or names the first failed check and exits 1. */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define T (64 * 1024)
#define CHECK(c) do { if (!(c)) { fprintf(stderr, "check failed at line %d: %s\n", __LINE__, #c); exit(1); } } while (0)

static void fill(unsigned char *p, size_t n, unsigned seed) { for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(seed + i * 7); }
static int same(const unsigned char *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++) if (p[i] != (unsigned char)(seed + i * 7)) return 0;
    return 1;
}
static int zero(const unsigned char *p, size_t n) { for (size_t i = 0; i < n; i++) if (p[i]) return 0; return 1; }

int main(void) {
    static const size_t sizes[] = {0, 1, 15, 16, 100, 1024, 1025, 4095, 4096, T - 1, T, T + 1, 3u << 20, (5u << 20) + 17};
    static const size_t aligns[] = {8, 16, 64, 4096, 1u << 16, 2u << 20};
    const size_t ns = sizeof sizes / sizeof *sizes, na = sizeof aligns / sizeof *aligns;
    for (size_t k = 0; k < ns; k++) {
        size_t n = sizes[k];
        unsigned char *p = malloc(n);
        CHECK(p != NULL);
        CHECK(((uintptr_t)p % 8) == 0);
        CHECK(malloc_usable_size(p) >= n);
        fill(p, n, 1);
        /* calloc after a dirty block of the same size: zeroed. */
        free(p);
        unsigned char *z = calloc(1, n);
        CHECK(z != NULL && zero(z, n));
        free(z);
        z = calloc(n, 1);
        CHECK(z != NULL && zero(z, n));
        free(z);
        for (size_t a = 0; a < na; a++) {
            void *q = NULL;
            CHECK(posix_memalign(&q, aligns[a], n) == 0);
            CHECK(((uintptr_t)q % aligns[a]) == 0);
            CHECK(malloc_usable_size(q) >= n);
            fill(q, n, 2);
            void *r = aligned_alloc(aligns[a], n);
            CHECK(r != NULL && ((uintptr_t)r % aligns[a]) == 0);
            void *m = memalign(aligns[a], n);
            CHECK(m != NULL && ((uintptr_t)m % aligns[a]) == 0);
            CHECK(same(q, n, 2));
            free(q);
            free(r);
            free(m);
        }
        void *v = valloc(n);
        CHECK(v != NULL && ((uintptr_t)v % 4096) == 0);
        void *pv = pvalloc(n);
        CHECK(pv != NULL && ((uintptr_t)pv % 4096) == 0);
        CHECK(malloc_usable_size(pv) >= ((n + 4095) / 4096) * 4096);
        free(v);
        free(pv);
    }
    /* Invalid alignments. */
    void *q = (void *)1;
    CHECK(posix_memalign(&q, 3, 10) == EINVAL && q == (void *)1);
    CHECK(posix_memalign(&q, 4, 10) == EINVAL);
    CHECK(posix_memalign(&q, 0, 10) == EINVAL);
    errno = 0;
    CHECK(aligned_alloc(48, 10) == NULL && errno == EINVAL);
    void *m = memalign(48, 100);
    CHECK(m != NULL && ((uintptr_t)m % 64) == 0);
    free(m);
    /* Overflow and exhaustion: NULL with ENOMEM. */
    errno = 0;
    CHECK(calloc(SIZE_MAX / 2, 3) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(calloc((size_t)1 << 33, (size_t)1 << 33) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(calloc(T / 8, 8) != NULL);
    errno = 0;
    CHECK(malloc(SIZE_MAX - 4096) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(pvalloc(SIZE_MAX - 10) == NULL && errno == ENOMEM);
    /* realloc keeps contents across the threshold, both ways. */
    unsigned char *p = realloc(NULL, 100);
    CHECK(p != NULL);
    fill(p, 100, 3);
    size_t kept = 100;
    static const size_t steps[] = {T - 1, T, 3u << 20, 9u << 20, 2u << 20, T + 5, 5000, 64, (7u << 20) + 1, 10};
    for (size_t k = 0; k < sizeof steps / sizeof *steps; k++) {
        size_t n = steps[k];
        p = realloc(p, n);
        CHECK(p != NULL);
        CHECK(same(p, kept < n ? kept : n, 3));
        fill(p, n, 3);
        kept = n;
        CHECK(malloc_usable_size(p) >= n);
    }
    CHECK(realloc(p, 0) == NULL); /* glibc: frees p */
    unsigned char *big = malloc(2 * T);
    fill(big, 2 * T, 9);
    errno = 0;
    CHECK(realloc(big, SIZE_MAX - 4096) == NULL && errno == ENOMEM);
    CHECK(same(big, 2 * T, 9));
    errno = 0;
    CHECK(reallocarray(big, SIZE_MAX / 4, 8) == NULL && errno == ENOMEM);
    big = reallocarray(big, 3, T);
    CHECK(big != NULL && same(big, 2 * T, 9));
    free(big);
    free(NULL);
    CHECK(malloc_usable_size(NULL) == 0);
    /* strdup and friends allocate through the same malloc. */
    char *s = strdup("far memory");
    CHECK(s && strcmp(s, "far memory") == 0);
    free(s);
    puts("conformance ok");
    return 0;
}
