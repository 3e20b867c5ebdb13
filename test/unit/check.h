/* A tiny assertion helper shared by the unit tests: a failed CHECK prints the
 * place and the expression and exits non-zero, so ctest sees the failure. */
#ifndef BALLAST_TEST_CHECK_H
#define BALLAST_TEST_CHECK_H
#include <stdio.h>
#include <stdlib.h>

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__,   \
                    #cond);                                                    \
            exit(1);                                                           \
        }                                                                      \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                     \
    do {                                                                       \
        long long _a = (long long)(a), _b = (long long)(b);                    \
        if (_a != _b) {                                                        \
            fprintf(stderr, "%s:%d: CHECK failed: %s == %s (%lld != %lld)\n",  \
                    __FILE__, __LINE__, #a, #b, _a, _b);                       \
            exit(1);                                                           \
        }                                                                      \
    } while (0)
#endif
