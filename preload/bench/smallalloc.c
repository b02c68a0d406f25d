/* Small-allocation-heavy load: THREADS threads, each ITERS rounds of malloc(16..512 B) / free over a window of
 * live blocks (the first byte of each block is written and read back). Prints "mops <million ops/s>". */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define WINDOW 1024

static long iters;

static void *run(void *arg) {
    uint64_t r = (uintptr_t)arg * 0x9E3779B97F4A7C15ull | 1;
    unsigned char *live[WINDOW] = {0};
    unsigned long sum = 0;
    for (long i = 0; i < iters; i++) {
        r ^= r << 13; r ^= r >> 7; r ^= r << 17;
        int k = (int)(r % WINDOW);
        if (live[k]) { sum += live[k][0]; free(live[k]); }
        size_t n = 16 + (r >> 16) % 497;
        live[k] = malloc(n);
        live[k][0] = (unsigned char)n;
    }
    for (int k = 0; k < WINDOW; k++) free(live[k]);
    return (void *)(uintptr_t)sum;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    iters = argc > 2 ? atol(argv[2]) : 5000000;
    pthread_t t[64];
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (intptr_t i = 0; i < threads; i++) pthread_create(&t[i], NULL, run, (void *)(i + 1));
    for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double s = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    /* one malloc and one free per iteration */
    printf("mops %.2f\n", 2.0 * (double)threads * (double)iters / s / 1e6);
    return 0;
}
