#!/usr/bin/env bash
# .ci/test-all.sh [PART...]: what `make test` runs. Each part is a make target (test-c, test-units, test-swift,
# test-python, test-k8s, lint, test-systemd), run in that order whatever the earlier ones gave, with its output
# shown as it comes. The run ends with the parts' outcomes, every skip with its reason, and ONE last line
# "N passed, N failed" over all of them; the exit status is non-zero when anything failed.
#
# How a part is counted:
#   - a part that prints lines "N passed, N failed" (the C tests, the Swift tests, the Python client's tests, the
#     systemd container test)
#     is counted by the last such line, and as one more failure if it exits non-zero while reporting none;
#   - any other part counts as one check: passed when it exits 0;
#   - a part that prints "skipped: REASON" and exits 0 is listed as skipped and counts nothing, so that a skip
#     is seen, never mistaken for a pass. Lines "skipped: ..." from any part are listed at the end.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "$#" -gt 0 ]; then parts=("$@"); else parts=(test-c test-units test-swift test-python test-k8s lint test-systemd); fi
MAKE=${MAKE:-make}

logs=$(mktemp -d "${TMPDIR:-/tmp}/rulesd-test-all.XXXXXX")
trap 'rm -rf "$logs"' EXIT
total_passed=0 total_failed=0
outcomes=() skips=()

for part in "${parts[@]}"; do
    log=$logs/$part.log
    echo "===== make $part"
    started=$(date +%s)
    "$MAKE" --no-print-directory "$part" 2>&1 | tee "$log"
    status=${PIPESTATUS[0]}
    seconds=$(($(date +%s) - started))
    while IFS= read -r line; do skips+=("$line"); done < <(grep -E '^skipped: ' "$log" || true)
    counts=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -n 1 || true)
    if [ -n "$counts" ]; then
        passed=${counts%% passed*}
        failed=${counts#*, }
        failed=${failed%% failed*}
        if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
        outcome="$passed passed, $failed failed"
    elif [ "$status" -eq 0 ] && grep -qE '^skipped: ' "$log"; then
        passed=0 failed=0 outcome="skipped"
    elif [ "$status" -eq 0 ]; then
        passed=1 failed=0 outcome="passed"
    else
        passed=0 failed=1 outcome="FAILED (exit $status)"
    fi
    if [ "$status" -ne 0 ] && [ -n "$counts" ]; then outcome="$outcome (exit $status)"; fi
    total_passed=$((total_passed + passed))
    total_failed=$((total_failed + failed))
    outcomes+=("$(printf '%-13s %s (%d s)' "$part" "$outcome" "$seconds")")
done

echo "===== summary"
printf '%s\n' "${outcomes[@]}"
if [ "${#skips[@]}" -gt 0 ]; then printf '%s\n' "${skips[@]}"; fi
echo "$total_passed passed, $total_failed failed"
[ "$total_failed" -eq 0 ]
