/* Shared main() for the CUnit test programs: one program per module,
 * tests/unit/test_<module>.c, each built and run by "make check".
 *
 *   static void test_x(void) { CU_ASSERT_EQUAL(...); }
 *   UNIT_MAIN("bitmap", UNIT_TEST(test_x), UNIT_TEST(test_y))
 *
 * The program prints CUnit's summary and then one line
 * "unit <suite>: N passed, N failed" that tests/run parses. */
#ifndef IMGTOOL_UNIT_H
#define IMGTOOL_UNIT_H

#include <CUnit/Basic.h>
#include <stdio.h>

struct unit_test {
    const char *name;
    void (*fn)(void);
};

#define UNIT_TEST(f) { #f, f }

static inline int unit_run(const char *suite_name, const struct unit_test *tests, size_t n)
{
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    CU_pSuite suite = CU_add_suite(suite_name, NULL, NULL);
    for (size_t i = 0; i < n; i++)
        CU_add_test(suite, tests[i].name, tests[i].fn);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned run = CU_get_number_of_tests_run();
    unsigned failed = CU_get_number_of_tests_failed();
    printf("unit %s: %u passed, %u failed\n", suite_name, run - failed, failed);
    CU_cleanup_registry();
    return failed ? 1 : 0;
}

#define UNIT_MAIN(suite_name, ...)                                          \
    int main(void)                                                          \
    {                                                                       \
        static const struct unit_test tests[] = { __VA_ARGS__ };            \
        return unit_run(suite_name, tests, sizeof(tests) / sizeof(tests[0])); \
    }

#endif
