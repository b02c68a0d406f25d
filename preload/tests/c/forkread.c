/* Allocates argv[1] MiB in one far block, fills it, forks; the child checksums the block and exits 0 if it
 * matches the parent's checksum, 3 if not (silent wrong data). Prints "child exit N" or "child signal N". */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static uint64_t sum(const uint64_t *p, size_t n) {
    uint64_t h = 0;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001B3ull;
    return h;
}

int main(int argc, char **argv) {
    size_t n = (argc > 1 ? strtoul(argv[1], NULL, 10) : 8) << 17;
    uint64_t *p = malloc(n * 8);
    for (size_t i = 0; i < n; i++) p[i] = i * 0x9E3779B97F4A7C15ull + 1;
    uint64_t want = sum(p, n);
    fflush(stdout);
    pid_t c = fork();
    if (c == 0) {
        char *small = malloc(100); /* the child's own allocations work */
        uint64_t got = sum(p, n);
        free(small);
        free(p);
        _exit(got == want ? 0 : 3);
    }
    int st;
    waitpid(c, &st, 0);
    /* The parent's block is intact after the child ran. */
    if (sum(p, n) != want) { puts("parent corrupted"); return 1; }
    free(p);
    if (WIFEXITED(st)) printf("child exit %d\n", WEXITSTATUS(st));
    else printf("child signal %d\n", WTERMSIG(st));
    return 0;
}
