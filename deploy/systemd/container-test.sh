#!/usr/bin/env bash
# deploy/systemd/container-test.sh [--deb FILE] [--keep]
#
# The package under a real systemd: boots a throwaway container with systemd as PID 1 (the project's
# systemd-container.sh, never systemd on this machine itself), installs the .deb there and checks what an
# administrator relies on: the package enables nothing and starts with an empty, valid rules directory; socket
# activation; live edits and a synchronous `systemctl reload` (also refusing broken rules); who may connect,
# query and reload, and the audit log;
# a watchdog restart of a stopped daemon; the exposure docs/OPERATIONS.md promises; a journal without
# warnings; purge.
#
#   --deb FILE   the package to test (default: build it with `make deb`)
#   --keep       leave the container running afterwards (for a look inside; remove it with `... down NAME`)
#
# Needs root (for the container). Without root, or when the container cannot boot, it prints
# "skipped: <reason>" and exits 0, so `make test` lists the skip instead of failing. The container tool is
# $SYSTEMD_CONTAINER, else ../shared/tools/systemd-container.sh beside the checkout.
# Prints "ok: ..." or "FAILED: ..." per check and, last, "N passed, N failed". Exit: 0 all passed, 1 otherwise.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source_root=$(cd "$here/../.." && pwd)
container=${SYSTEMD_CONTAINER:-$source_root/../shared/tools/systemd-container.sh}
name=rulesd-test-$$
deb="" keep=0
while [ "$#" -gt 0 ]; do
    case "$1" in
        --deb) deb=${2:?--deb needs a file}; shift 2 ;;
        --keep) keep=1; shift ;;
        *) echo "usage: $0 [--deb FILE] [--keep]" >&2; exit 2 ;;
    esac
done

skip() { echo "skipped: make test-systemd: $*"; exit 0; }
[ "$(id -u)" -eq 0 ] || skip "needs root to boot a systemd container (run make test as root)"
[ -x "$container" ] || skip "no container tool at $container (set SYSTEMD_CONTAINER)"

promised=$(sed -n -E 's/.*exposure \*\*([0-9]+\.[0-9]+) [A-Z]+\*\*.*/\1/p' "$source_root/docs/OPERATIONS.md" | head -n 1)
[ -n "$promised" ] || { echo "container-test.sh: docs/OPERATIONS.md promises no exposure" >&2; exit 1; }

if [ -z "$deb" ]; then
    echo "== make deb"
    start=$(date +%s)
    make -C "$source_root" --no-print-directory deb
    echo "== make deb took $(($(date +%s) - start)) s"
    deb=$(ls -t "$source_root"/dist/rulesd_*.deb | head -n 1)
fi
[ -f "$deb" ] || { echo "container-test.sh: no package $deb" >&2; exit 1; }

echo "== booting container $name"
if ! "$container" up "$name" >/dev/null; then
    "$container" down "$name" >/dev/null 2>&1 || true
    skip "the systemd container did not boot (see the messages above)"
fi
cleanup() {
    if [ "$keep" -eq 1 ]; then
        echo "== container $name left running: $container exec $name ...; $container down $name"
    else
        "$container" down "$name" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

inside() { "$container" exec "$name" env -u RULESD_SOCKET "$@"; }
passed=0 failed=0
pass() { passed=$((passed + 1)); echo "ok: $1"; }
fail() {
    failed=$((failed + 1))
    echo "FAILED: $1"
    if [ -n "${2:-}" ]; then printf '%s\n' "$2" | tail -n 30 | sed 's/^/    /'; fi
}
# check DESCRIPTION COMMAND...: the command, run inside, must succeed.
check() {
    local what=$1 output
    shift
    if output=$(inside "$@" 2>&1); then pass "$what"; else fail "$what" "$output"; fi
}
# refuse DESCRIPTION COMMAND...: the command, run inside, must fail.
refuse() {
    local what=$1 output
    shift
    if output=$(inside "$@" 2>&1); then fail "$what (it succeeded)" "$output"; else pass "$what"; fi
}
# eventually DESCRIPTION SHELL-CONDITION: waits (up to 60 s) for the condition to hold inside.
eventually() {
    local what=$1 condition=$2
    if inside sh -c "for i in \$(seq 300); do if $condition; then exit 0; fi; sleep 0.2; done; exit 1"; then
        pass "$what"
    else
        fail "$what" "$(inside sh -c "$condition" 2>&1 || true)"
    fi
}
# A shell condition: config key $1 has the value $2 for the daemon right now (rulesctl prints "value: 4").
config_is() { echo "rulesctl config $1 2>/dev/null | grep -qx 'value: *$2'"; }

echo "== install"
"$container" push "$name" "$deb" /root/rulesd.deb
check "the package installs" dpkg -i /root/rulesd.deb
check "user and group rulesd exist" sh -c 'getent passwd rulesd && getent group rulesd'
check "the rules directory holds only its README" sh -c '[ "$(ls -A /etc/rulesd/rules.d)" = README ]'
check "example rules are documentation" test -f /usr/share/doc/rulesd/examples/rules.d/routes.lua
check "the Python client is installed" test -f /usr/share/rulesd/clients/python/rulesd_client.py
check "copyright and changelog are installed" \
    sh -c 'test -f /usr/share/doc/rulesd/copyright && ls /usr/share/doc/rulesd/changelog*.gz'
refuse "the package enables nothing" systemctl is-enabled --quiet rulesd.socket
refuse "the package starts nothing" systemctl is-active --quiet rulesd.service

echo "== socket activation"
check "rulesd.socket starts" systemctl enable --now rulesd.socket
refuse "rulesd.service waits for a first connection" systemctl is-active --quiet rulesd.service
check "the first query starts rulesd and is answered (empty rules directory)" rulesctl ping
check "rulesd.service is active after it" systemctl is-active --quiet rulesd.service
check "status reports the empty rule set" sh -c 'rulesctl status | grep -E "files[^0-9]*0"'

echo "== edits and reloads"
check "the example rules copied in" cp -r /usr/share/doc/rulesd/examples/rules.d/. /etc/rulesd/rules.d/
eventually "the watcher loads them" "$(config_is http.timeout_ms 1500)"
# Edits touch values no example rule test pins (flags/checkout_test.lua pins http.timeout_ms, and a failing
# rule test refuses the reload, as it should).
check "a rule edited in place" sed -i \
    's/config "db.statement_timeout_ms" (5000)/config "db.statement_timeout_ms" (6000)/' \
    /etc/rulesd/rules.d/settings/storage.lua
eventually "the edit goes live without a reload" "$(config_is db.statement_timeout_ms 6000)"
check "another edit" sed -i 's/config "http.retries" (3)/config "http.retries" (4)/' \
    /etc/rulesd/rules.d/settings/http.lua
check "systemctl reload succeeds" systemctl reload rulesd.service
check "systemctl reload returned after the rules went live" sh -c "$(config_is http.retries 4)"

echo "== who may connect"
check "two users, one in group rulesd" sh -c \
    'useradd -M -s /usr/sbin/nologin outsider && useradd -M -s /usr/sbin/nologin -G rulesd insider'
refuse "a user outside group rulesd cannot connect" runuser -u outsider -- rulesctl ping
check "a member of group rulesd can query" runuser -u insider -- rulesctl config http.retries
check "a member of group rulesd is refused reload by default" sh -c \
    'runuser -u insider -- rulesctl reload 2>&1 | grep -q "FORBIDDEN: reload needs the operate role"'
eventually "the refusal is in the audit log" "rulesctl audit --event refused | grep -q 'reload needs operate'"
refuse "the audit log is not readable by the member" runuser -u insider -- rulesctl audit
check "role_operate = group:rulesd in the config file" sh -c \
    'echo "role_operate = group:rulesd" >>/etc/rulesd/rulesd.conf && systemctl restart rulesd.service'
check "then a member of group rulesd can reload" runuser -u insider -- rulesctl reload
check "and the reload is in the audit log with its outcome" sh -c \
    'rulesctl audit --event operation --json | grep "\"operation\":\"reload\"" | grep -q "\"outcome\":\"ok\""'

echo "== journal and exposure"
# Everything so far is normal operation: not one warning. One line is the container's, not the unit's:
# systemd-nspawn withholds CAP_NET_ADMIN, so PID 1 cannot bring up lo in PrivateNetwork='s namespace.
check "the journal of the units has no warnings" sh -c \
    'out=$(journalctl --no-pager -o cat -p warning -u rulesd.service -u rulesd.socket |
        grep -v "^Failed to configure loopback network device, ignoring: Operation not permitted$");
    [ -z "$out" ] || { echo "$out"; exit 1; }'
# libdispatch logs these at notice level, under -p warning: looked for by name, from rulesd and from the
# rulesctl that ExecReload= runs, both inside the unit's sandbox.
check "no thread priority complaints from the unit" sh -c \
    '! journalctl --no-pager -o cat -u rulesd.service | grep -i "thread priority"'
score=$(inside systemd-analyze security --no-pager rulesd.service 2>/dev/null | tail -n 1 |
    sed -n -E 's/.*exposure level for [^:]*: ([0-9]+\.[0-9]+).*/\1/p')
if [ -n "$score" ] && awk -v s="$score" -v p="$promised" 'BEGIN { exit !(s <= p) }'; then
    pass "exposure $score <= $promised (docs/OPERATIONS.md)"
else
    fail "exposure ${score:-unknown} above $promised (docs/OPERATIONS.md)"
fi

echo "== broken rules"
check "a broken rule file" sh -c 'printf "config \"broken\" (\n" >/etc/rulesd/rules.d/broken.lua'
refuse "systemctl reload fails on broken rules" systemctl reload rulesd.service
check "the previous rules keep serving" sh -c "$(config_is http.retries 4)"
check "the broken file removed" rm /etc/rulesd/rules.d/broken.lua
check "systemctl reload succeeds again" systemctl reload rulesd.service

echo "== a second namespace, in a rule process of its own (the release build with two namespaces)"
check "a namespace's rules directory" sh -c 'mkdir -p /etc/rulesd/namespaces/payments &&
    printf "config \"payments.retries\" (5)\nflag \"payments.ok\" { default = \"on\" }\n" \
        >/etc/rulesd/namespaces/payments/p.lua'
check "[namespace payments] with isolation = process" sh -c \
    'printf "[namespace payments]\nrules = /etc/rulesd/namespaces/payments\nisolation = process\n" >>/etc/rulesd/rulesd.conf'
check "rulesd --check-config accepts it" rulesd --check-config --config /etc/rulesd/rulesd.conf
check "rulesd restarted with two namespaces" systemctl restart rulesd.service
eventually "the payments namespace answers a flag from its rule process" \
    "rulesctl --namespace payments flag payments.ok 2>/dev/null | grep -qx 'value: *true'"
check "and a config value" sh -c \
    "rulesctl --namespace payments config payments.retries 2>/dev/null | grep -qx 'value: *5'"
check "the default namespace still answers" sh -c "$(config_is http.retries 4)"
check "the rule process runs, confined, under the shipped unit" sh -c \
    'rulesctl --namespace payments status | grep -E "^isolation +process, pid [0-9]+, running, 0 restarts"'
check "the rule process never failed to start" sh -c \
    '! journalctl --no-pager -o cat -u rulesd.service | grep -E "rule process (ended|could not)"'

echo "== watchdog"
# A short watchdog, a short abort timeout and no core file: the test takes seconds, not a minute.
check "a watchdog drop-in" sh -c 'mkdir -p /etc/systemd/system/rulesd.service.d &&
    printf "[Service]\nWatchdogSec=2s\nTimeoutAbortSec=5s\nLimitCORE=0\n" \
        >/etc/systemd/system/rulesd.service.d/watchdog.conf &&
    systemctl daemon-reload && systemctl restart rulesd.service'
old_pid=$(inside systemctl show -P MainPID rulesd.service)
check "rulesd stopped with SIGSTOP" kill -STOP "$old_pid"
eventually "systemd restarts the stopped daemon" \
    "pid=\$(systemctl show -P MainPID rulesd.service); [ \"\$pid\" != 0 ] && [ \"\$pid\" != $old_pid ] && systemctl is-active --quiet rulesd.service"
check "the restart was the watchdog's" sh -c 'journalctl --no-pager -o cat -u rulesd.service | grep -i "watchdog timeout"'
check "the restarted daemon answers" sh -c "$(config_is http.retries 4)"
check "the drop-in removed" sh -c 'rm -r /etc/systemd/system/rulesd.service.d && systemctl daemon-reload'

echo "== purge"
check "the package purges" dpkg --purge rulesd
refuse "the socket is gone" systemctl is-active --quiet rulesd.socket
refuse "the service is gone" systemctl is-active --quiet rulesd.service
check "no unit files or enablement links are left" sh -c \
    '! ls /lib/systemd/system/rulesd.* /etc/systemd/system/*/rulesd.* 2>/dev/null | grep .'
check "the state directory is gone" test ! -e /var/lib/rulesd
check "the configuration files are gone" test ! -e /etc/rulesd/rulesd.conf

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
