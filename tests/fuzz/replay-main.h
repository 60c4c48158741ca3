/* The replay program of a fuzz target (built with -DFUZZ_REPLAY by make
 * check): runs LLVMFuzzerTestOneInput on each file named on its command
 * line, so that the corpus stays covered by the ordinary test suite.
 * Included at the end of each target. */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        FILE *f = fopen(argv[i], "rb");
        if (!f) {
            perror(argv[i]);
            return 2;
        }
        size_t cap = 1 << 20, len = 0;
        uint8_t *data = malloc(cap);
        size_t n;
        while (data && (n = fread(data + len, 1, cap - len, f)) > 0) {
            len += n;
            if (len == cap) {
                uint8_t *bigger = realloc(data, cap * 2);
                if (!bigger)
                    break;
                data = bigger;
                cap *= 2;
            }
        }
        fclose(f);
        if (!data)
            return 2;
        LLVMFuzzerTestOneInput(data, len);
        free(data);
    }
    return 0;
}
