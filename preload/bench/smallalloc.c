/* Small-allocation-heavy load: THREADS threads, each ITERS rounds of malloc(16..512 B) / free over a window of
 * live blocks (the first byte of each block is written and read back). Prints "mops M cpu_mops C": million
 * operations per second of wall-clock time, and per second of the threads' summed CPU time (which time slices
 * lost to other processes on a loaded machine do not inflate).
 * Usage: smallalloc [THREADS] [ITERS] [BIG_MIB]. BIG_MIB > 0 first allocates (and touches) one block of that
 * many MiB and frees it at the end: under `farmem run --threshold 1M` that starts far memory, so the small
 * allocations run with the far region in place. Only the threads' work is timed. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define WINDOW 1024

static long iters;

struct worker { pthread_t t; uint64_t seed; unsigned long sum; double cpu_s; };

static double seconds(clockid_t c) {
    struct timespec ts;
    clock_gettime(c, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *run(void *arg) {
    struct worker *w = arg;
    double c0 = seconds(CLOCK_THREAD_CPUTIME_ID);
    uint64_t r = w->seed * 0x9E3779B97F4A7C15ull | 1;
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
    w->sum = sum;
    w->cpu_s = seconds(CLOCK_THREAD_CPUTIME_ID) - c0;
    return NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    iters = argc > 2 ? atol(argv[2]) : 5000000;
    long big_mib = argc > 3 ? atol(argv[3]) : 0;
    if (threads < 1 || threads > 64 || iters < 1 || big_mib < 0) {
        fprintf(stderr, "usage: smallalloc [THREADS 1-64] [ITERS >= 1] [BIG_MIB >= 0]\n");
        return 2;
    }
    unsigned char *big = NULL;
    if (big_mib > 0) {
        size_t n = (size_t)big_mib << 20;
        big = malloc(n);
        if (!big) { perror("malloc"); return 1; }
        for (size_t i = 0; i < n; i += 4096) big[i] = 1;
    }
    struct worker w[64];
    double a = seconds(CLOCK_MONOTONIC);
    for (int i = 0; i < threads; i++) {
        w[i].seed = (uint64_t)i + 1;
        pthread_create(&w[i].t, NULL, run, &w[i]);
    }
    double cpu = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(w[i].t, NULL);
        cpu += w[i].cpu_s;
    }
    double s = seconds(CLOCK_MONOTONIC) - a;
    /* one malloc and one free per iteration */
    double ops = 2.0 * (double)threads * (double)iters;
    printf("mops %.2f cpu_mops %.2f\n", ops / s / 1e6, ops / cpu / 1e6);
    free(big);
    return 0;
}
