/*
 * check.h - the tally the C tests share: check() counts a check and prints the label of one that failed; a test's
 * main reports `failures` of `checks` and exits non-zero when any failed.
 */
#ifndef RS_TEST_CHECK_H
#define RS_TEST_CHECK_H

#include <stdio.h>

static int checks, failures;

static void check(int ok, const char *label)
{
    checks++;
    if (!ok) {
        failures++;
        fprintf(stderr, "FAIL %s\n", label);
    }
}

#endif
