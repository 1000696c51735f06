#!/usr/bin/env bash
# Builds and runs the C-level tests of the rule sandbox: every Tests/CSandbox/*_test.c.
# A test file names the sandbox sources it links on a line of its own:
#   // sources: rs_pattern.c rs_helpers.c
# Each test is built with AddressSanitizer and UndefinedBehaviorSanitizer and must exit 0.
# The last line is the tally, "N passed, N failed" (a build failure counts as a failed test); the script
# exits non-zero when any test failed or when no test ran at all (a run that tests nothing is not a pass).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
src="$top/Sources/CRuleSandbox"
out=$(mktemp -d "${TMPDIR:-/tmp}/rs-ctests.XXXXXX")
trap 'rm -rf "$out"' EXIT
cflags=$(pkg-config --cflags lua5.4)
libs=$(pkg-config --libs lua5.4)
passed=0
failed=0
for t in "$here"/*_test.c; do
    [ -e "$t" ] || continue
    name=$(basename "$t" .c)
    sources=$(sed -n 's|^// sources:[[:space:]]*||p' "$t" | head -n 1)
    files=()
    for s in $sources; do files+=("$src/$s"); done
    if ! gcc -std=gnu11 -O1 -g -Wall -Wextra -Werror -fno-omit-frame-pointer \
        -fsanitize=address,undefined -fno-sanitize-recover=undefined \
        -I "$src" -I "$src/include" $cflags -o "$out/$name" "$t" "${files[@]}" $libs -lm; then
        echo "FAIL $name (build)"; failed=$((failed + 1)); continue
    fi
    if ASAN_OPTIONS=detect_leaks=1 "$out/$name"; then
        echo "PASS $name"; passed=$((passed + 1))
    else
        echo "FAIL $name"; failed=$((failed + 1))
    fi
done
if [ $((passed + failed)) -eq 0 ]; then
    echo "no C test found in $here (expected *_test.c files)" >&2
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
