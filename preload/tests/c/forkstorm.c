/* Threads allocate and free large and small blocks while the main thread forks repeatedly; each child
 * allocates (small and large), frees and exits. A lock held across fork would hang a child. Prints
 * "forkstorm ok". */
#include <pthread.h>
#include <stdint.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static atomic_int stop;

static void *churn(void *arg) {
    unsigned r = (unsigned)(uintptr_t)arg;
    while (!atomic_load(&stop)) {
        r = r * 1103515245u + 12345u;
        size_t n = (r >> 8) % 4 == 0 ? (1u << 20) + (r % (1u << 20)) : 16 + r % 1000;
        char *p = malloc(n);
        memset(p, 1, n);
        p = realloc(p, n / 2 + 1);
        free(p);
    }
    return NULL;
}

int main(void) {
    pthread_t t[3];
    for (uintptr_t i = 0; i < 3; i++) pthread_create(&t[i], NULL, churn, (void *)(i + 1));
    for (int k = 0; k < 40; k++) {
        pid_t c = fork();
        if (c == 0) {
            char *a = malloc(100), *b = malloc(3u << 20);
            memset(b, 2, 3u << 20);
            int ok = a && b && b[12345] == 2;
            free(a);
            free(b);
            if (k % 2) exit(ok ? 0 : 1); /* runs atexit handlers in the child */
            _exit(ok ? 0 : 1);
        }
        int st;
        if (waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            printf("child %d failed (status %d)\n", k, st);
            return 1;
        }
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < 3; i++) pthread_join(t[i], NULL);
    puts("forkstorm ok");
    return 0;
}
