/* Uses far memory (one 8 MiB block), then closes stderr before exiting, as coreutils programs do at exit
 * (close_stdout). With a FILE argument it first closes every descriptor from 3 up, as daemons do, and opens FILE
 * at descriptor 100, writing "mine\n" to it. Prints "closestderr ok". */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    size_t n = 8u << 20;
    unsigned char *p = malloc(n);
    if (!p) return 1;
    memset(p, 7, n);
    unsigned long sum = 0;
    for (size_t i = 0; i < n; i += 4096) sum += p[i];
    free(p);
    if (argc > 1) {
        for (int fd = 3; fd < 1024; fd++) close(fd);
        int f = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (f < 0 || dup2(f, 100) != 100 || write(100, "mine\n", 5) != 5) return 3;
        close(f);
    }
    printf("closestderr ok\n");
    fflush(stdout);
    fclose(stderr);
    return sum == 7ul * (n / 4096) ? 0 : 2;
}
