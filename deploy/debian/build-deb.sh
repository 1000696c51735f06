#!/usr/bin/env bash
# Builds dist/rulesd_<version>_<arch>.deb from already built release binaries, with plain dpkg tools
# (dpkg-deb, dpkg-shlibdeps from dpkg-dev); no debhelper, no debian/ source tree.
#
# Usage: deploy/debian/build-deb.sh [--build-dir DIR] [--out DIR] [--maintainer "Name <mail>"] [VERSION]
#
#   VERSION             package version (default 0.1.0)
#   --build-dir DIR     where rulesd and rulesctl were built (default .build/release); build them with
#                       swift build -c release --static-swift-stdlib
#   --out DIR           where the .deb goes (default dist/)
#   --maintainer TEXT   the Maintainer field (default: $DEBFULLNAME <$DEBEMAIL>, else the rulesd maintainers)
#   -h, --help          this text
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
die() { echo "build-deb.sh: $*" >&2; exit 1; }
note() { echo "build-deb.sh: $*"; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source_root=$(cd "$here/../.." && pwd)

version=0.1.0 build_dir="" out_dir=$source_root/dist
if [ -n "${DEBFULLNAME:-}" ] && [ -n "${DEBEMAIL:-}" ]; then
    maintainer="$DEBFULLNAME <$DEBEMAIL>"
else
    maintainer="rulesd maintainers <rulesd@example.com>"
fi
while [ "$#" -gt 0 ]; do
    case "$1" in
        --build-dir) build_dir=${2:?--build-dir needs a value}; shift 2 ;;
        --build-dir=*) build_dir=${1#*=}; shift ;;
        --out) out_dir=${2:?--out needs a value}; shift 2 ;;
        --out=*) out_dir=${1#*=}; shift ;;
        --maintainer) maintainer=${2:?--maintainer needs a value}; shift 2 ;;
        --maintainer=*) maintainer=${1#*=}; shift ;;
        -h | --help) usage; exit 0 ;;
        -*) usage >&2; die "unknown option $1" ;;
        *) version=$1; shift ;;
    esac
done
build_dir=${build_dir:-$source_root/.build/release}

# Debian versions start with a digit and use only these characters; a typo here would make dpkg-deb fail
# later with a less helpful message.
[[ "$version" =~ ^[0-9][A-Za-z0-9.+~:-]*$ ]] || die "not a Debian version: $version"
for tool in dpkg-deb dpkg-shlibdeps dpkg; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install dpkg-dev)"
done
arch=$(dpkg --print-architecture)
[ -x "$build_dir/rulesd" ] || die "$build_dir/rulesd not found; build first (swift build -c release --static-swift-stdlib)"
# The package version is the caller's to choose (e.g. 0.1.0-2 for a packaging fix), but a different upstream
# version than the program reports is usually a mistake worth a warning.
program_version=$("$build_dir/rulesd" --version 2>/dev/null | head -n 1 || true)
case "$version" in
    "$program_version" | "$program_version"-* | "$program_version"+* | "$program_version"~*) ;;
    *) note "warning: package version $version, but rulesd --version says '$program_version'" >&2 ;;
esac

# Timestamps inside the package come from the last commit, so rebuilding the same commit gives the same
# bytes (dpkg-deb clamps file times to SOURCE_DATE_EPOCH).
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git -C "$source_root" log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH

stage=$(mktemp -d "${TMPDIR:-/tmp}/rulesd-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT
# debhelper's layout (debian/<package>/ beside debian/control), because dpkg-shlibdeps expects it: it finds
# the package a binary belongs to, and resolves $ORIGIN in run paths, from that layout.
root=$stage/debian/rulesd

# --- stage the files exactly as `make install PREFIX=/usr` would place them ------------------------------------
# dpkg keeps its own list of files, so no install manifest.
"$source_root/deploy/install.sh" --prefix /usr --destdir "$root" --no-manifest "$build_dir"

# Stripped as dh_strip does (Debian policy 10.1, lintian's unstripped-binary-or-object). The symbol table goes
# too, so the symbols are kept beside the package (dist/rulesd_<version>_<arch>.symbols/PROGRAM.debug, linked
# from the binary by a .gnu_debuglink): gdb and a symbolizer find the function names of a crash there.
symbols_dir=$out_dir/rulesd_${version}_$(dpkg --print-architecture).symbols
mkdir -p "$symbols_dir"
for program in rulesd rulesctl; do
    objcopy --only-keep-debug "$root/usr/bin/$program" "$symbols_dir/$program.debug"
    strip --remove-section=.comment --remove-section=.note --strip-unneeded "$root/usr/bin/$program"
    objcopy --add-gnu-debuglink="$symbols_dir/$program.debug" "$root/usr/bin/$program"
    # SwiftPM adds a run path of $ORIGIN (here: /usr/bin) unless told not to; with the Swift runtime linked in
    # statically it serves no purpose, and a library search path in /usr/bin is not something to ship.
    # shellcheck disable=SC2016 # the literal text $ORIGIN is what the dynamic section holds
    if readelf -d "$root/usr/bin/$program" | grep -qE '(RUNPATH|RPATH).*\$ORIGIN'; then
        note "warning: $program has an \$ORIGIN run path; build with --disable-local-rpath" >&2
    fi
done

# --- /usr/share/doc/rulesd: copyright and changelog, as Debian policy (12.5, 12.7) asks of every package ---------
# A native version (no "-revision") takes changelog.gz, a packaging revision changelog.Debian.gz.
doc=$root/usr/share/doc/rulesd
install -D -m 0644 "$here/copyright" "$doc/copyright"
changelog_version=$(sed -n -E '1s/^rulesd \(([^)]+)\).*/\1/p' "$here/changelog")
[ "$changelog_version" = "$version" ] ||
    die "deploy/debian/changelog starts with version '${changelog_version:-?}', not $version; add an entry first"
case "$version" in *-*) changelog_name=changelog.Debian.gz ;; *) changelog_name=changelog.gz ;; esac
gzip -9n -c "$here/changelog" >"$doc/$changelog_name"
chmod 0644 "$doc/$changelog_name"

# --- Depends: computed from what the binaries really link ----------------------------------------------------
# dpkg-shlibdeps reads debian/control to learn the package names; a minimal fake one in the staging
# directory is enough (it is outside the package tree).
mkdir -p "$root/DEBIAN"
cat >"$stage/debian/control" <<EOF
Source: rulesd
Maintainer: $maintainer

Package: rulesd
Architecture: any
Description: fake control file for dpkg-shlibdeps
EOF
shlibs=$(cd "$stage" && dpkg-shlibdeps -O -e"debian/rulesd/usr/bin/rulesd" -e"debian/rulesd/usr/bin/rulesctl" \
    2>"$stage/shlibdeps.log") ||
    { cat "$stage/shlibdeps.log" >&2; die "dpkg-shlibdeps failed"; }
# Warnings (e.g. a library linked but not used) are worth seeing, not fatal.
if [ -s "$stage/shlibdeps.log" ]; then sed 's/^/  /' "$stage/shlibdeps.log" >&2; fi
shlib_depends=$(sed -n 's/^shlibs:Depends=//p' <<<"$shlibs")
[ -n "$shlib_depends" ] || die "dpkg-shlibdeps found no shared library dependencies: $shlibs"
# The maintainer scripts create the rulesd user with systemd-sysusers when the system has it, else adduser.
depends="$shlib_depends, adduser | systemd-sysusers"

# --- DEBIAN/ ------------------------------------------------------------------------------------------------
installed_size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<EOF
Package: rulesd
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $installed_size
Depends: $depends
Section: admin
Priority: optional
Description: hot-reloadable rules daemon for feature flags, routing rules and config values
 rulesd serves feature flags, routing rules and configuration values defined in
 Lua rule files (/etc/rulesd/rules.d) over a Unix socket, speaking
 newline-delimited JSON. Rules are evaluated in a sandbox with memory,
 instruction and time budgets. Edits to the rules directory are picked up
 without a restart; rule sets that fail to load are refused and the last good
 rules keep being served.
 .
 rulesctl is the command-line client. The package installs systemd units but
 enables and starts nothing; use: systemctl enable --now rulesd.socket
 The rules directory starts empty; example rules are in
 /usr/share/doc/rulesd/examples.
EOF

# Every file under /etc is configuration: dpkg keeps local edits on upgrade and asks before replacing them.
(cd "$root" && find etc -type f | LC_ALL=C sort | sed 's|^|/|') >"$root/DEBIAN/conffiles"
[ -s "$root/DEBIAN/conffiles" ] || rm -f "$root/DEBIAN/conffiles"

for script in postinst prerm postrm; do
    install -m 0755 "$here/$script" "$root/DEBIAN/$script"
done

# dpkg-deb insists on sane permissions: no group/other write anywhere in the tree.
chmod -R u+rwX,go+rX,go-w "$root"

mkdir -p "$out_dir"
deb=$out_dir/rulesd_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
note "built $deb"
note "Depends: $depends"
