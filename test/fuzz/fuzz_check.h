/* The fuzz targets' assertion: a failed check aborts, which libFuzzer (and
 * the corpus replay) reports as a finding with the input that caused it. */
#ifndef BALLAST_FUZZ_CHECK_H
#define BALLAST_FUZZ_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#define FUZZ_CHECK(cond)                                                       \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__,  \
                    #cond);                                                    \
            abort();                                                           \
        }                                                                      \
    } while (0)

#endif
