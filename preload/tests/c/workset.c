/* A working set of N MiB (argv[1]) in 4 MiB blocks: fill, two read-modify-write sweeps, scattered updates,
 * checksum. Prints "checksum <hex> maxrss_kb <n>". */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>

static uint64_t mix(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 256;
    size_t words = (4u << 20) / 8, nblocks = mib / 4;
    uint64_t **b = malloc(nblocks * sizeof *b);
    for (size_t i = 0; i < nblocks; i++) {
        b[i] = malloc(words * 8);
        if (!b[i]) { perror("malloc"); return 1; }
        for (size_t j = 0; j < words; j++) b[i][j] = mix(i * words + j);
    }
    uint64_t acc = 0;
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = 0; i < nblocks; i++)
            for (size_t j = 0; j < words; j++) {
                acc = ((acc << 5) | (acc >> 59)) ^ b[i][j] ^ (uint64_t)pass;
                b[i][j] ^= acc >> 3;
            }
    uint64_t r = acc | 1;
    for (int k = 0; k < 5000; k++) {
        r = mix(r);
        size_t i = r % nblocks, j = (r >> 20) % words;
        b[i][j] = b[i][j] * 31 + r;
    }
    uint64_t h = acc;
    for (size_t i = 0; i < nblocks; i++) {
        for (size_t j = 0; j < words; j++) h = mix(h ^ b[i][j]);
        free(b[i]);
    }
    free(b);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("checksum %016llx maxrss_kb %ld\n", (unsigned long long)h, ru.ru_maxrss);
    return 0;
}
