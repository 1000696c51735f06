#!/usr/bin/env bash
# Regenerates tools/link-order/rulesd.order: the functions rulesd runs while it starts, loads the example rules,
# serves every kind of request and reloads, in the order of the instructions they took (callgrind).
#
# Usage: tools/generate-link-order.sh [RULESD]
#   RULESD  a release build of rulesd (default: .build/release/rulesd, as `make release` builds it)
#
# The release build of rulesd links these functions first (Package.swift, --symbol-ordering-file), so that the
# code a running daemon touches sits together instead of spreading over the whole text of the binary: the kernel
# maps a file's pages around each one touched, so scattered code was most of rulesd's resident memory
# (docs/OPERATIONS.md, "Memory"). Names that no longer exist are ignored by the linker; regenerate after large
# changes to what start-up or serving runs. Needs valgrind and python3.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
binary="${1:-$root/.build/release/rulesd}"
[ -x "$binary" ] || { echo "$binary not found; run make release first" >&2; exit 1; }
for tool in valgrind callgrind_annotate objcopy python3; do
    command -v "$tool" >/dev/null || { echo "$tool not found (apt-get install valgrind binutils python3)" >&2; exit 1; }
done

work="$(mktemp -d "${TMPDIR:-/tmp}/rulesd-order.XXXXXX")"
pid=""
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# valgrind 3.19 (Debian 12) cannot read the toolchain's DWARF 5; the symbol table is all the order needs.
objcopy --strip-debug "$binary" "$work/rulesd"
cp -r "$root/config/rules.d" "$work/rules"
valgrind --tool=callgrind --demangle=no --callgrind-out-file="$work/callgrind.out" \
    "$work/rulesd" --rules "$work/rules" --socket "$work/s.sock" --state-dir "$work/state" --log-level warning \
    2>"$work/valgrind.log" &
pid=$!

python3 - "$work" <<'PYTHON'
import json, os, socket, sys, time

work = sys.argv[1]
path = os.path.join(work, "s.sock")

def connect(deadline):
    while time.time() < deadline:
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            return s
        except OSError:
            time.sleep(0.2)
    sys.exit("rulesd did not start under valgrind")

def ask(s, line):
    s.sendall(line.encode() + b"\n")
    answer = b""
    while not answer.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            sys.exit("connection closed")
        answer += chunk
    return json.loads(answer)

requests = [
    '{"op":"ping"}',
    '{"op":"flags"}',
    '{"op":"flags","context":{"user":"u-1","plan":"pro"}}',
    '{"op":"flag","flag":"checkout.new-flow","context":{"user":"u-42","plan":"pro"}}',
    '{"op":"flag","flag":"checkout.new-flow","context":{"user":"u-7","plan":"free","country":"DE","age":31}}',
    '{"op":"flag","flag":"no.such-flag","context":{}}',
    '{"op":"route","request":{"method":"GET","path":"/api/v2/users/7","headers":{"x-canary":"1"}}}',
    '{"op":"route","request":{"method":"POST","path":"/checkout","headers":{}}}',
    '{"op":"config","key":"http.timeout_ms"}',
    '{"op":"config","prefix":"http."}',
    '{"op":"status"}',
    'not json',
]
s = connect(time.time() + 300)
while True:
    try:
        ask(s, '{"op":"ping"}')
        break
    except SystemExit:
        s = connect(time.time() + 300)
for _ in range(20):
    for line in requests:
        ask(s, line)
# Pipelined, on a second connection.
t = connect(time.time() + 10)
t.sendall(b"".join(line.encode() + b"\n" for line in requests[:10]) * 20)
received = b""
while received.count(b"\n") < 200:
    received += t.recv(65536)
# A reload, then the same requests on the new generation.
with open(os.path.join(work, "rules", "profile.lua"), "w") as f:
    f.write('config "profile.reloaded" (true)\n')
deadline = time.time() + 300
while ask(s, '{"op":"ping"}').get("generation", 1) < 2:
    if time.time() > deadline:
        sys.exit("rulesd did not reload under valgrind")
    time.sleep(0.5)
for line in requests:
    ask(s, line)
PYTHON

kill -TERM "$pid"
wait "$pid" || true
pid=""
mkdir -p "$root/tools/link-order"
# Lines of the report read "   1,234 ( 0.5%)  ???:NAME [OBJECT]"; only functions of the rulesd binary are kept.
callgrind_annotate --threshold=100 --inclusive=no "$work/callgrind.out" |
    sed -n "s|^ *[0-9,]* ( *[0-9.]*%)  ???:\([^ ]*\) \[$work/rulesd\]\$|\1|p" >"$root/tools/link-order/rulesd.order"
count=$(wc -l <"$root/tools/link-order/rulesd.order")
[ "$count" -gt 1000 ] || { echo "only $count functions recorded; see $work/valgrind.log" >&2; exit 1; }
echo "tools/link-order/rulesd.order: $count functions"
