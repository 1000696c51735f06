"""Runs the Python client's tests and ends with the lines .ci/test-all.sh counts: "skipped: REASON" for each
skipped test and "N passed, N failed". Exits non-zero when a test failed."""

import os
import sys
import unittest

here = os.path.dirname(os.path.abspath(__file__))
suite = unittest.defaultTestLoader.discover(here, pattern="test_*.py")
result = unittest.TextTestRunner(verbosity=2).run(suite)
failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
for test, reason in result.skipped:
    print(f"skipped: python client: {test.id()}: {reason}")
print(f"{result.testsRun - failed - len(result.skipped)} passed, {failed} failed")
sys.exit(1 if failed else 0)
