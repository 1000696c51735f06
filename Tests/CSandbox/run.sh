#!/usr/bin/env bash
# Builds and runs the C-level tests of the rule sandbox: every Tests/CSandbox/*_test.c.
# A test file names the sandbox sources it links on a line of its own:
#   // sources: rs_pattern.c rs_helpers.c
# Each test is built with AddressSanitizer and UndefinedBehaviorSanitizer and must exit 0.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
src="$top/Sources/CRuleSandbox"
out=$(mktemp -d "${TMPDIR:-/tmp}/rs-ctests.XXXXXX")
trap 'rm -rf "$out"' EXIT
cflags=$(pkg-config --cflags lua5.4)
libs=$(pkg-config --libs lua5.4)
status=0
for t in "$here"/*_test.c; do
    [ -e "$t" ] || continue
    name=$(basename "$t" .c)
    sources=$(sed -n 's|^// sources:[[:space:]]*||p' "$t" | head -n 1)
    files=()
    for s in $sources; do files+=("$src/$s"); done
    if ! gcc -std=gnu11 -O1 -g -Wall -Wextra -Werror -fno-omit-frame-pointer \
        -fsanitize=address,undefined -fno-sanitize-recover=undefined \
        -I "$src" -I "$src/include" $cflags -o "$out/$name" "$t" "${files[@]}" $libs -lm; then
        echo "FAIL $name (build)"; status=1; continue
    fi
    if ASAN_OPTIONS=detect_leaks=1 "$out/$name"; then
        echo "PASS $name"
    else
        echo "FAIL $name"; status=1
    fi
done
exit $status
