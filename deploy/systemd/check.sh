#!/usr/bin/env bash
# deploy/systemd/check.sh [MAX_EXPOSURE]
#
# Offline checks of rulesd's systemd units; no running systemd is needed (containers and CI are fine).
# Needs only Debian 12's `systemd` package for systemd-analyze and systemd-sysusers:
#     apt-get install -y systemd
#
#  1. Project rules: what the units must (and must not) say, including the traps that systemd itself
#     does not flag (Type=notify-reload on 252, RuntimeDirectory= deleting the socket's directory).
#  2. systemd-analyze verify of rulesd.socket and rulesd.service in a scratch --root holding the
#     host's stock units, ours, and stub executables for every Exec*= path, so neither the binaries
#     nor an installation are needed. verify exits 0 after unknown keys or unparsable values and only
#     prints a warning, so any output at all is a failure.
#  3. systemd-sysusers on rulesd.sysusers.conf into a scratch root (the host is not touched).
#  4. systemd-analyze security --offline=true on rulesd.service: prints the exposure score (last
#     line of output) and fails above MAX_EXPOSURE. The default is the score docs/OPERATIONS.md
#     promises (the bold "exposure **N.N SAFE**" there), so the docs and the gate cannot drift apart.
#
# Exit: 0 ok; 1 a check failed; 2 usage error or missing tools; 3 exposure above MAX_EXPOSURE.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OPERATIONS=$HERE/../../docs/OPERATIONS.md
SOCKET_UNIT=rulesd.socket
SERVICE_UNIT=rulesd.service
SYSUSERS=rulesd.sysusers.conf

fail_usage() { echo "check.sh: $*" >&2; exit 2; }

[ $# -le 1 ] || fail_usage "usage: $0 [MAX_EXPOSURE]"
if [ $# -eq 1 ]; then
    MAX_EXPOSURE=$1
else
    [ -f "$OPERATIONS" ] || fail_usage "no MAX_EXPOSURE given and $OPERATIONS not found"
    MAX_EXPOSURE=$(sed -n -E 's/.*exposure \*\*([0-9]+\.[0-9]+) [A-Z]+\*\*.*/\1/p' "$OPERATIONS" | head -n 1)
    [ -n "$MAX_EXPOSURE" ] || fail_usage "docs/OPERATIONS.md promises no exposure (\"exposure **N.N SAFE**\")"
    echo "== exposure promised by docs/OPERATIONS.md: $MAX_EXPOSURE"
fi
[[ $MAX_EXPOSURE =~ ^[0-9]+(\.[0-9]+)?$ ]] || fail_usage "MAX_EXPOSURE must be a number such as 1.0"
for tool in systemd-analyze systemd-sysusers; do
    command -v "$tool" >/dev/null 2>&1 || fail_usage "$tool not found (Debian: apt-get install -y systemd)"
done
for file in "$SOCKET_UNIT" "$SERVICE_UNIT" "$SYSUSERS"; do
    [ -f "$HERE/$file" ] || fail_usage "missing $HERE/$file"
done

STOCK_UNITS=""
for dir in /usr/lib/systemd/system /lib/systemd/system; do
    if [ -f "$dir/sysinit.target" ]; then STOCK_UNITS=$dir; break; fi
done
[ -n "$STOCK_UNITS" ] || fail_usage "systemd's own units (sysinit.target) not found"

SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/rulesd-unit-check.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT
failed=0

# --- 1. Project rules --------------------------------------------------------------------------

# The value(s) of KEY= in a unit file, comments and blank lines ignored.
values() { sed -n -E "s/^[[:space:]]*$2=(.*)$/\1/p" "$HERE/$1"; }

require() {  # FILE KEY VALUE: the last assignment of KEY must be VALUE
    local actual
    actual=$(values "$1" "$2" | tail -n 1)
    if [ "$actual" != "$3" ]; then
        echo "rules: $1 must set $2=$3 (found: ${actual:-nothing})"
        failed=1
    fi
}

forbid() {  # FILE KEY WHY
    if [ -n "$(values "$1" "$2")" ]; then
        echo "rules: $1 must not set $2= ($3)"
        failed=1
    fi
}

echo "== project rules"
require "$SERVICE_UNIT" Type notify
require "$SERVICE_UNIT" NotifyAccess main
require "$SERVICE_UNIT" ExecReload "/usr/bin/rulesctl --socket /run/rulesd/rulesd.sock reload"
require "$SERVICE_UNIT" ConfigurationDirectory rulesd
require "$SERVICE_UNIT" StateDirectory rulesd
require "$SERVICE_UNIT" User rulesd
[ -n "$(values "$SERVICE_UNIT" WatchdogSec)" ] || { echo "rules: $SERVICE_UNIT must set WatchdogSec="; failed=1; }
forbid "$SERVICE_UNIT" RuntimeDirectory "it would delete /run/rulesd and the socket node at every stop"
forbid "$SERVICE_UNIT" DynamicUser "group rulesd must be stable for the people who join it"
require "$SOCKET_UNIT" ListenStream /run/rulesd/rulesd.sock
require "$SOCKET_UNIT" FileDescriptorName query
require "$SOCKET_UNIT" SocketGroup rulesd
require "$SOCKET_UNIT" SocketMode 0660
# systemd >= 253 accepts notify-reload, so verify on a newer CI machine would not catch it.
if grep -Eq '^[[:space:]]*Type=notify-reload' "$HERE/$SOCKET_UNIT" "$HERE/$SERVICE_UNIT"; then
    echo "rules: Type=notify-reload is for systemd >= 253 only; Debian 12 falls back to Type=simple"
    failed=1
fi
# libdispatch's worker threads call setpriority(); the filter must answer it with success (":0"), after
# ~@resources (which would otherwise drop the entry again), or the journal fills with its complaints.
filters=$(values "$SERVICE_UNIT" SystemCallFilter)
resources_line=$(grep -n -- '@resources' <<<"$filters" | tail -n 1 | cut -d: -f1 || true)
setpriority_line=$(grep -n -x -- '~setpriority:0' <<<"$filters" | tail -n 1 | cut -d: -f1 || true)
if [ -z "$setpriority_line" ] || { [ -n "$resources_line" ] && [ "$setpriority_line" -lt "$resources_line" ]; }; then
    echo "rules: $SERVICE_UNIT must set SystemCallFilter=~setpriority:0 after the @resources line"
    failed=1
fi
[ $failed -eq 0 ] && echo "rules: ok"

# --- 2. systemd-analyze verify in a scratch root -----------------------------------------------

ROOT=$SCRATCH/root
mkdir -p "$ROOT/usr/lib/systemd" "$ROOT/usr/bin" "$ROOT/usr/sbin" "$ROOT/etc/systemd/system"
# Debian 12 is merged-/usr; the symlinks let units name /bin, /sbin or /lib paths as well.
ln -s usr/bin "$ROOT/bin"
ln -s usr/sbin "$ROOT/sbin"
ln -s usr/lib "$ROOT/lib"
cp -a "$STOCK_UNITS" "$ROOT/usr/lib/systemd/system"
cp "$HERE/$SOCKET_UNIT" "$HERE/$SERVICE_UNIT" "$ROOT/etc/systemd/system/"
for unit in "$SOCKET_UNIT" "$SERVICE_UNIT"; do
    if [ -d "$HERE/$unit.d" ]; then cp -r "$HERE/$unit.d" "$ROOT/etc/systemd/system/"; fi
done

# A stub for every absolute Exec*= command (after the -@:+! prefixes), so verify finds an executable.
while IFS= read -r command; do
    stub=$ROOT$command
    mkdir -p "$(dirname "$stub")"
    if [ ! -e "$stub" ]; then
        printf '#!/bin/sh\nexit 0\n' >"$stub"
        chmod 0755 "$stub"
    fi
done < <(cat "$HERE/$SOCKET_UNIT" "$HERE/$SERVICE_UNIT" \
    | sed -n -E 's/^[[:space:]]*Exec[A-Za-z]*=[[:space:]]*[-@:+!]*(\/[^[:space:]]+).*/\1/p' | sort -u)

echo "== systemd-analyze verify (systemd $(systemd-analyze --version | sed -n -E '1s/^systemd ([0-9]+).*/\1/p'))"
rc=0
output=$(systemd-analyze verify --man=no --root="$ROOT" "$SOCKET_UNIT" "$SERVICE_UNIT" 2>&1) || rc=$?
if [ $rc -ne 0 ] || [ -n "$output" ]; then
    printf '%s\n' "$output" | sed "s|$ROOT||g"
    echo "verify: FAILED (rc=$rc; any message counts as a failure)"
    failed=1
else
    echo "verify: ok ($SOCKET_UNIT $SERVICE_UNIT)"
fi

# --- 3. systemd-sysusers into a scratch root ---------------------------------------------------

echo "== systemd-sysusers (scratch root)"
SYSROOT=$SCRATCH/sysroot
mkdir -p "$SYSROOT/etc"
rc=0
# sysusers needs an absolute path; a relative one is "ignored" with rc 1.
output=$(systemd-sysusers --root="$SYSROOT" "$HERE/$SYSUSERS" 2>&1) || rc=$?
printf '%s\n' "$output"
if [ $rc -ne 0 ] || printf '%s\n' "$output" | grep -qiE 'garbage|invalid|failed|ignoring'; then
    echo "sysusers: FAILED (rc=$rc)"
    failed=1
elif ! grep -qs '^rulesd:' "$SYSROOT/etc/passwd" || ! grep -qs '^rulesd:' "$SYSROOT/etc/group"; then
    echo "sysusers: FAILED (no user and group rulesd created)"
    failed=1
else
    echo "sysusers: ok (user and group rulesd)"
fi

# --- 4. systemd-analyze security ---------------------------------------------------------------

echo "== systemd-analyze security --offline=true"
rc=0
report=$(systemd-analyze security --no-pager --offline=true --root="$ROOT" "$SERVICE_UNIT" 2>&1) || rc=$?
summary=$(printf '%s\n' "$report" | tail -n 1)
score=$(printf '%s\n' "$summary" | sed -n -E 's/.*exposure level for [^:]*: ([0-9]+\.[0-9]+).*/\1/p')
if [ -z "$score" ]; then
    printf '%s\n' "$report"
    echo "security: could not score $SERVICE_UNIT (rc=$rc)"
    echo "n/a"
    exit 1
fi
# The settings that still cost something, for whoever wants to push the score further down.
printf '%s\n' "$report" | grep -E '^✗' | grep -vE '[[:space:]]0\.0$' \
    | sed -E 's/^✗[[:space:]]+([^[:space:]]+).*[[:space:]]([0-9]+\.[0-9]+)$/security: remaining \1 \2/' || true
echo "security: $SERVICE_UNIT $(printf '%s\n' "$summary" | sed -E 's/.*: ([0-9]+\.[0-9]+ [A-Z]+).*/\1/')"

status=0
[ $failed -eq 0 ] || status=1
if [ $status -eq 0 ] && awk -v score="$score" -v limit="$MAX_EXPOSURE" 'BEGIN { exit !(score > limit) }'; then
    echo "exposure $score is above $MAX_EXPOSURE"
    status=3
fi
# Last line: the bare score, for scripts.
echo "$score"
exit $status
