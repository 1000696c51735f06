#!/usr/bin/env bash
# Removes what deploy/install.sh installed, exactly: the files listed in its install manifest, then the
# directories it created, if they are empty. Configuration (/etc/rulesd) and state (/var/lib/rulesd) are
# never touched, and neither is the rulesd user.
#
# Usage: deploy/uninstall.sh [--prefix DIR] [--destdir DIR] [--manifest FILE] [--dry-run]
#
#   --prefix DIR      the prefix given to install.sh (default: $PREFIX or /usr/local)
#   --destdir DIR     the staging root given to install.sh (default: $DESTDIR or none)
#   --manifest FILE   the manifest to read (default: DESTDIR/PREFIX/share/rulesd/install-manifest)
#   --dry-run         print what would be removed, remove nothing
#   -h, --help        this text
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
die() { echo "uninstall.sh: $*" >&2; exit 1; }
note() { echo "uninstall.sh: $*"; }

prefix=${PREFIX:-/usr/local}
destdir=${DESTDIR:-}
manifest="" dry_run=0
while [ "$#" -gt 0 ]; do
    case "$1" in
        --prefix) prefix=${2:?--prefix needs a value}; shift 2 ;;
        --prefix=*) prefix=${1#*=}; shift ;;
        --destdir) destdir=${2?--destdir needs a value}; shift 2 ;;
        --destdir=*) destdir=${1#*=}; shift ;;
        --manifest) manifest=${2:?--manifest needs a value}; shift 2 ;;
        --manifest=*) manifest=${1#*=}; shift ;;
        --dry-run) dry_run=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument $1" ;;
    esac
done
destdir=${destdir%/}
manifest=${manifest:-$destdir${prefix%/}/share/rulesd/install-manifest}

# Without the manifest there is no way to know what install.sh put where; guessing could delete files
# that belong to the Debian package or to someone else.
[ -f "$manifest" ] || die "no install manifest at $manifest (was rulesd installed with this --prefix/--destdir?)"

run() { if [ "$dry_run" -eq 1 ]; then echo "would run: $*"; else "$@"; fi; }

# Stop a running daemon before its program disappears (only on the live system, only if systemd runs).
if [ -z "$destdir" ] && [ -d /run/systemd/system ] && grep -qE '^f .*/rulesd\.(service|socket)$' "$manifest"; then
    for unit in rulesd.service rulesd.socket; do
        if systemctl is-active --quiet "$unit" 2>/dev/null; then run systemctl stop "$unit"; fi
    done
fi

# Never remove configuration or state, even if a hand-edited manifest names them.
protected() {
    case "$1" in
        /etc/rulesd | /etc/rulesd/* | /var/lib/rulesd | /var/lib/rulesd/*) return 0 ;;
        *) return 1 ;;
    esac
}

# Read the whole manifest first: it is one of the files to remove.
mapfile -t files < <(grep -E '^f /' "$manifest" | cut -c3-)
# Directories deepest first, so a parent is tried only after its children.
mapfile -t dirs < <(grep -E '^d /' "$manifest" | cut -c3- | awk '{ print length($0) "\t" $0 }' | sort -rn | cut -f2-)

removed=0 units_removed=0
for path in "${files[@]}"; do
    if protected "$path"; then note "skipping protected $path" >&2; continue; fi
    target=$destdir$path
    if [ -f "$target" ] || [ -L "$target" ]; then
        run rm -f "$target"
        removed=$((removed + 1))
        case "$path" in *.service | *.socket | *.timer | *.path) units_removed=$((units_removed + 1)) ;; esac
    fi
done
# A directory install.sh created goes only if it is empty now: anything else in it is not ours.
for path in "${dirs[@]}"; do
    protected "$path" && continue
    target=$destdir$path
    if [ -d "$target" ] && [ -z "$(ls -A "$target")" ]; then
        run rmdir "$target"
    fi
done
note "removed $removed files; configuration in /etc/rulesd and state in /var/lib/rulesd were left alone"

if [ -z "$destdir" ] && [ "$units_removed" -gt 0 ] && [ -d /run/systemd/system ]; then
    run systemctl daemon-reload
fi
