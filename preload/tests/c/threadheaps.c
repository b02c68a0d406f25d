/* THREADS threads (argv[1], default 32) each allocate 1000 blocks of 64 B and write them, then all wait while the
 * main thread reads its memory use: prints "rss_kb R huge_kb H" (VmRSS, and AnonHugePages from smaps_rollup: the
 * process's anonymous memory held in transparent huge pages). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BLOCKS 1000

static pthread_barrier_t bar;

static void *run(void *arg) {
    (void)arg;
    static __thread char *blocks[BLOCKS];
    for (int i = 0; i < BLOCKS; i++) {
        blocks[i] = malloc(64);
        if (!blocks[i]) abort();
        memset(blocks[i], i & 0xff, 64);
    }
    pthread_barrier_wait(&bar); /* allocated */
    pthread_barrier_wait(&bar); /* measured */
    for (int i = 0; i < BLOCKS; i++) free(blocks[i]);
    return NULL;
}

static long kb_after(const char *path, const char *key) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char line[256];
    long v = -1;
    size_t n = strlen(key);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, n)) v = atol(line + n);
    fclose(f);
    return v;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 32;
    if (n < 1 || n > 1024) return 2;
    pthread_t *t = malloc(sizeof *t * (size_t)n);
    pthread_barrier_init(&bar, NULL, (unsigned)n + 1);
    for (int i = 0; i < n; i++)
        if (pthread_create(&t[i], NULL, run, NULL)) return 3;
    pthread_barrier_wait(&bar);
    long rss = kb_after("/proc/self/status", "VmRSS:");
    long huge = kb_after("/proc/self/smaps_rollup", "AnonHugePages:");
    pthread_barrier_wait(&bar);
    for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
    printf("rss_kb %ld huge_kb %ld\n", rss, huge);
    return 0;
}
