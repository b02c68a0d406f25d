/* Threads allocating, filling, checking, reallocating and freeing blocks of 16 B to 3 MiB, some crossing the
 * threshold. Prints "stress ok". */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define THREADS 4
#define SLOTS 32
#define ROUNDS 4000

static void *run(void *arg) {
    uint64_t r = (uintptr_t)arg * 0x2545F4914F6CDD1Dull | 1;
    unsigned char *p[SLOTS] = {0};
    size_t n[SLOTS] = {0};
    for (int k = 0; k < ROUNDS; k++) {
        r ^= r << 13; r ^= r >> 7; r ^= r << 17;
        int s = (int)(r % SLOTS);
        unsigned char tag = (unsigned char)(s + 1);
        if (p[s]) {
            for (size_t i = 0; i < n[s]; i += 61)
                if (p[s][i] != tag) { fprintf(stderr, "corrupted block\n"); exit(1); }
            if (r & 64) {
                size_t m = (r >> 8) % 4 == 0 ? (64u << 10) + (r >> 12) % (3u << 20) : 16 + (r >> 12) % 512;
                unsigned char *q = realloc(p[s], m);
                if (!q) { fprintf(stderr, "realloc failed\n"); exit(1); }
                if (m > n[s]) memset(q + n[s], tag, m - n[s]);
                p[s] = q; n[s] = m;
                continue;
            }
            free(p[s]);
            p[s] = NULL;
        } else {
            n[s] = (r >> 8) % 8 == 0 ? (64u << 10) + (r >> 12) % (3u << 20) : 16 + (r >> 12) % 512;
            p[s] = (r & 1) ? calloc(1, n[s]) : malloc(n[s]);
            if (!p[s]) { fprintf(stderr, "alloc failed\n"); exit(1); }
            memset(p[s], tag, n[s]);
        }
    }
    for (int s = 0; s < SLOTS; s++) free(p[s]);
    return NULL;
}

int main(void) {
    pthread_t t[THREADS];
    for (uintptr_t i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, run, (void *)(i + 1));
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    puts("stress ok");
    return 0;
}
