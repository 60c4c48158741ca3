/* The replay main() shared by every fuzz target in tests/fuzz: with
 * FUZZ_REPLAY, make check builds each target as a program that runs every
 * file named on its command line through LLVMFuzzerTestOneInput, so that
 * the corpora stay covered by the ordinary test suite.  Include it last. */
#ifndef IMGTOOL_FUZZ_REPLAY_MAIN_H
#define IMGTOOL_FUZZ_REPLAY_MAIN_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

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

#endif
