/* Uses far memory (one 8 MiB block), then closes stderr before exiting, as coreutils programs do at exit
 * (close_stdout). Prints "closestderr ok". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
    size_t n = 8u << 20;
    unsigned char *p = malloc(n);
    if (!p) return 1;
    memset(p, 7, n);
    unsigned long sum = 0;
    for (size_t i = 0; i < n; i += 4096) sum += p[i];
    free(p);
    printf("closestderr ok\n");
    fflush(stdout);
    fclose(stderr);
    return sum == 7ul * (n / 4096) ? 0 : 2;
}
