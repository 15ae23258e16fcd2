#ifndef VERDICTD_FUZZ_FUZZ_CHECK_H_
#define VERDICTD_FUZZ_FUZZ_CHECK_H_

#include <cstdio>
#include <cstdlib>

// Aborts (which libFuzzer reports as a crash and saves the input for) when a property the code
// under test promises does not hold. Unlike assert() it is not compiled out by NDEBUG.
#define FUZZ_CHECK(condition)                                                                 \
  do {                                                                                        \
    if (!(condition)) {                                                                       \
      std::fprintf(stderr, "%s:%d: FUZZ_CHECK failed: %s\n", __FILE__, __LINE__, #condition); \
      std::abort();                                                                           \
    }                                                                                         \
  } while (0)

#endif  // VERDICTD_FUZZ_FUZZ_CHECK_H_
