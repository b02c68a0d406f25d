/* Which side each size lands on under libfarmem_preload.so with FARMEM_THRESHOLD=64K: the shim's malloc settles
 * sizes up to 1 KiB, then sizes below the threshold, then the rest, each by its own compare, and free routes by
 * the region's bounds. Exactly the two blocks of at least 64K are far (the test reads the --stats count). Every
 * block is filled and checked, and freed, in an order that mixes both sides. Prints "routing ok". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define T (64 * 1024)
#define CHECK(c) do { if (!(c)) { fprintf(stderr, "check failed at line %d: %s\n", __LINE__, #c); exit(1); } } while (0)

int main(void) {
    static const size_t sizes[] = {0, 1, 16, 512, 1023, 1024, 1025, 4096, T - 1, T, T + 1};
    enum { N = sizeof sizes / sizeof *sizes };
    unsigned char *p[N];
    for (int k = 0; k < N; k++) {
        p[k] = malloc(sizes[k]);
        CHECK(p[k] != NULL);
        memset(p[k], k + 1, sizes[k]);
    }
    for (int k = 0; k < N; k++)
        for (size_t i = 0; i < sizes[k]; i++) CHECK(p[k][i] == (unsigned char)(k + 1));
    for (int k = N - 1; k >= 0; k -= 2) free(p[k]);
    for (int k = N - 2; k >= 0; k -= 2) free(p[k]);
    free(NULL);
    puts("routing ok");
    return 0;
}
