#!/usr/bin/env bash
# .ci/swift-test.sh [SWIFT TEST ARGUMENTS...]: `swift test --no-parallel` with its output shown as it comes,
# then the skipped tests with their reasons ("skipped: ...") and one line "N passed, N failed" counting the
# Swift Testing tests by their own result lines. Exits with swift test's status.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SWIFT=${SWIFT:-swift}

log=$(mktemp "${TMPDIR:-/tmp}/rulesd-swift-test.XXXXXX")
trap 'rm -f "$log"' EXIT
# InotifyLimitScenarios is the entry point of child processes that other tests start, not a test of its own.
"$SWIFT" test --no-parallel --skip InotifyLimitScenarios "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

# Swift Testing prints one line per test: "<symbol> Test NAME passed after ...", "... failed after ...",
# "... skipped" (with the reason in quotes when one was given). "Test run with ..." is the run's total.
results=$(grep -E '^[^ ]+ Test ' "$log" | grep -v -E '^[^ ]+ Test run with ' || true)
passed=$(grep -c -E ' (passed|passed with [0-9]+ known issues?) after ' <<<"$results" || true)
failed=$(grep -c -E ' failed after ' <<<"$results" || true)
grep -E ' skipped(:|\.|$)' <<<"$results" | sed -E 's/^[^ ]+ Test /skipped: swift test: /' || true
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
    echo "swift test exited $status without a failed test (a crash or a build error?)"
    failed=1
fi
echo "$passed passed, $failed failed"
exit "$status"
