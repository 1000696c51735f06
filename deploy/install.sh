#!/usr/bin/env bash
# Installs built rulesd binaries and their files: programs, systemd units, sysusers.d/tmpfiles.d entries,
# man pages, shell completions, example rules (as documentation), the Python client module, and (only where
# none exist yet) the configuration and an empty rules directory.
#
# The rule API's LuaLS annotations go to PREFIX/share/rulesd/lua/rulesd.lua.
#
# Usage: deploy/install.sh [options] [BUILD_DIR]
#
#   BUILD_DIR           where `rulesd` and `rulesctl` were built (default: .build/release of this checkout)
#   --prefix DIR        installation prefix (default: $PREFIX or /usr/local)
#   --destdir DIR       staging root put in front of every path, for packaging (default: $DESTDIR or none)
#   --bindir DIR        programs (default: PREFIX/bin)
#   --mandir DIR        man pages (default: PREFIX/share/man)
#   --unitdir DIR       systemd units (default: /lib/systemd/system for prefix /usr, else PREFIX/lib/systemd/system)
#   --sysconfdir DIR    configuration root; rulesd.conf and rules.d go to SYSCONFDIR/rulesd (default: /etc)
#   --manpages DIR      install the pages rulesd.8 and rulesctl.1 from DIR instead of generating them
#   --no-manifest       do not record what was installed (packages: dpkg keeps its own list)
#   -h, --help          this text
#
# What was installed is recorded in PREFIX/share/rulesd/install-manifest, which deploy/uninstall.sh reads
# to remove exactly those files. Configuration and state are never recorded, so never removed.
#
# Man pages come, in order of preference, from --manpages, from swift-argument-parser's generate-manual tool
# (found as $GENERATE_MANUAL, next to the binaries, or on PATH), or from a plain rendering of `--help`.
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
die() { echo "install.sh: $*" >&2; exit 1; }
note() { echo "install.sh: $*"; }

source_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

prefix=${PREFIX:-/usr/local}
destdir=${DESTDIR:-}
bindir="" mandir="" unitdir="" sysconfdir=/etc manpages_dir="" write_manifest=1 build_dir=""

while [ "$#" -gt 0 ]; do
    case "$1" in
        --prefix) prefix=${2:?--prefix needs a value}; shift 2 ;;
        --prefix=*) prefix=${1#*=}; shift ;;
        --destdir) destdir=${2?--destdir needs a value}; shift 2 ;;
        --destdir=*) destdir=${1#*=}; shift ;;
        --bindir) bindir=${2:?--bindir needs a value}; shift 2 ;;
        --bindir=*) bindir=${1#*=}; shift ;;
        --mandir) mandir=${2:?--mandir needs a value}; shift 2 ;;
        --mandir=*) mandir=${1#*=}; shift ;;
        --unitdir) unitdir=${2:?--unitdir needs a value}; shift 2 ;;
        --unitdir=*) unitdir=${1#*=}; shift ;;
        --sysconfdir) sysconfdir=${2:?--sysconfdir needs a value}; shift 2 ;;
        --sysconfdir=*) sysconfdir=${1#*=}; shift ;;
        --manpages) manpages_dir=${2:?--manpages needs a value}; shift 2 ;;
        --manpages=*) manpages_dir=${1#*=}; shift ;;
        --no-manifest) write_manifest=0; shift ;;
        -h | --help) usage; exit 0 ;;
        -*) usage >&2; die "unknown option $1" ;;
        *)
            [ -z "$build_dir" ] || die "more than one build directory given"
            build_dir=$1; shift ;;
    esac
done

# Installed paths are absolute; relative ones would land wherever the installer happened to be run from.
for dir in "$prefix" "$sysconfdir" ${bindir:+"$bindir"} ${mandir:+"$mandir"} ${unitdir:+"$unitdir"}; do
    case "$dir" in /*) ;; *) die "installation directories must be absolute: $dir" ;; esac
done
prefix=${prefix%/}
[ -n "$prefix" ] || prefix=/
destdir=${destdir%/}
if [ -n "$destdir" ]; then
    mkdir -p "$destdir"
    destdir=$(cd "$destdir" && pwd)
fi
bindir=${bindir:-${prefix%/}/bin}
mandir=${mandir:-${prefix%/}/share/man}
# Debian 12 (and debhelper) keep units in /lib/systemd/system; any other prefix keeps them under itself,
# where systemd also looks for /usr/local (systemd-analyze unit-paths).
if [ -z "$unitdir" ]; then
    if [ "$prefix" = /usr ]; then unitdir=/lib/systemd/system; else unitdir=${prefix%/}/lib/systemd/system; fi
fi
# sysusers.d and tmpfiles.d: /usr/lib for the distribution, /usr/local/lib for local installs (both searched
# by systemd 252).
libdir=${prefix%/}/lib
datadir=${prefix%/}/share
if [ "$prefix" = /usr ]; then
    zsh_completions=$datadir/zsh/vendor-completions
else
    zsh_completions=$datadir/zsh/site-functions
fi
manifest=$datadir/rulesd/install-manifest

build_dir=${build_dir:-$source_root/.build/release}
for program in rulesd rulesctl; do
    [ -x "$build_dir/$program" ] || die "$build_dir/$program not found; build first (swift build -c release --static-swift-stdlib)"
    # A binary that needs the Swift runtime as shared libraries runs only where the toolchain is installed.
    # This happens easily: `swift package plugin generate-manual` relinks .build/release without
    # --static-swift-stdlib.
    if command -v readelf >/dev/null &&
        readelf -d "$build_dir/$program" | grep -qE 'NEEDED.*\[lib(swift|Foundation|dispatch|BlocksRuntime)'; then
        die "$build_dir/$program links the Swift runtime dynamically; rebuild with: swift build -c release --static-swift-stdlib"
    fi
done

work=$(mktemp -d "${TMPDIR:-/tmp}/rulesd-install.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Everything installed goes through record_*, so the manifest lists exactly what this run put in place.
: >"$work/manifest"
record_parents() {
    # Directories this run creates, outermost first, so uninstall can remove them again once empty.
    local target=$1 missing=()
    local dir
    dir=$(dirname "$target")
    while [ "$dir" != / ] && [ ! -e "$destdir$dir" ]; do
        missing=("$dir" "${missing[@]}")
        dir=$(dirname "$dir")
    done
    for dir in "${missing[@]}"; do echo "d $dir" >>"$work/manifest"; done
}
put() { # put MODE SOURCE TARGET
    local mode=$1 source=$2 target=$3
    record_parents "$target"
    install -D -m "$mode" "$source" "$destdir$target"
    echo "f $target" >>"$work/manifest"
}

# --- programs ----------------------------------------------------------------------------------------------
for program in rulesd rulesctl; do
    put 0755 "$build_dir/$program" "$bindir/$program"
done
note "programs -> $destdir$bindir"

# --- systemd units, sysusers.d, tmpfiles.d -----------------------------------------------------------------
units_src=$source_root/deploy/systemd
units_installed=0 sysusers_installed="" tmpfiles_installed=""
if [ -d "$units_src" ]; then
    for unit in "$units_src"/*.service "$units_src"/*.socket "$units_src"/*.timer "$units_src"/*.path; do
        [ -f "$unit" ] || continue
        # The units name /usr/bin/rulesd and /usr/bin/rulesctl; point them at the programs actually installed.
        sed -e "s#/usr/bin/rulesd\\b#$bindir/rulesd#g" -e "s#/usr/bin/rulesctl\\b#$bindir/rulesctl#g" \
            "$unit" >"$work/$(basename "$unit")"
        put 0644 "$work/$(basename "$unit")" "$unitdir/$(basename "$unit")"
        units_installed=$((units_installed + 1))
    done
    for candidate in rulesd.sysusers.conf rulesd.sysusers sysusers.conf; do
        if [ -f "$units_src/$candidate" ]; then
            sysusers_installed=$libdir/sysusers.d/rulesd.conf
            put 0644 "$units_src/$candidate" "$sysusers_installed"
            break
        fi
    done
    for candidate in rulesd.tmpfiles.conf rulesd.tmpfiles tmpfiles.conf; do
        if [ -f "$units_src/$candidate" ]; then
            tmpfiles_installed=$libdir/tmpfiles.d/rulesd.conf
            put 0644 "$units_src/$candidate" "$tmpfiles_installed"
            break
        fi
    done
fi
if [ "$units_installed" -gt 0 ]; then
    note "systemd units -> $destdir$unitdir"
else
    note "warning: no systemd units in $units_src; none installed" >&2
fi

# --- man pages -------------------------------------------------------------------------------------------------
# Sections: rulesd is a daemon (8), rulesctl a user command (1).
section_of() { if [ "$1" = rulesd ]; then echo 8; else echo 1; fi; }

# A fixed date keeps packages reproducible: SOURCE_DATE_EPOCH if set, else the last commit, else today.
if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
    page_date=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)
elif page_date=$(git -C "$source_root" log -1 --format=%cs 2>/dev/null) && [ -n "$page_date" ]; then
    :
else
    page_date=$(date -u +%Y-%m-%d)
fi

find_generate_manual() {
    if [ -n "${GENERATE_MANUAL:-}" ] && [ -x "$GENERATE_MANUAL" ]; then
        echo "$GENERATE_MANUAL"
    elif [ -x "$build_dir/generate-manual" ]; then
        echo "$build_dir/generate-manual"
    else
        command -v generate-manual 2>/dev/null || true
    fi
}

# The fallback: the program's own --help, as a man page that keeps the help's layout. Plainer than
# generate-manual's, but it documents every option, and needs nothing but the program.
render_help_page() { # render_help_page PROGRAM SECTION OUTPUT
    local program=$1 section=$2 output=$3 help version
    help=$("$build_dir/$program" --help 2>&1) || return 1
    grep -q '^USAGE:' <<<"$help" || return 1
    version=$("$build_dir/$program" --version 2>/dev/null | head -n 1) || version=""
    {
        printf '.TH "%s" "%s" "%s" "rulesd %s" "rulesd manual"\n' \
            "$(tr '[:lower:]' '[:upper:]' <<<"$program")" "$section" "$page_date" "$version"
        # Help headings (`OPTIONS:`) become sections, in man order: NAME (the overview's first paragraph),
        # SYNOPSIS (usage), DESCRIPTION (the whole overview), then the rest as they come. Text stays verbatim
        # (.nf) with roff's special characters escaped: backslashes, and a leading dot or quote that would
        # read as a request.
        awk -v name="$program" '
            function esc(s) { gsub(/\\/, "\\e", s); if (s ~ /^[.'"'"']/) s = "\\&" s; return s }
            /^[A-Z][A-Z ]*:( |$)/ {
                head = $0; sub(/:.*/, "", head); rest = $0; sub(/^[A-Z][A-Z ]*: ?/, "", rest)
                if (head == "OVERVIEW") head = "DESCRIPTION"
                if (head == "USAGE") head = "SYNOPSIS"
                order[++n] = head; text[head] = ""
                if (rest == "") next
                $0 = rest
            }
            n == 0 { next }
            {
                text[head] = text[head] esc($0) "\n"
                if (head == "DESCRIPTION" && !abstract_done) {
                    if ($0 ~ /^[ \t]*$/) abstract_done = 1
                    else abstract = abstract (abstract == "" ? "" : " ") $0
                }
            }
            function section(h) { if (h in text && !(h in done)) { print ".SH " h; print ".nf"; printf "%s", text[h]; print ".fi"; done[h] = 1 } }
            END {
                gsub(/^[ \t]+|[ \t]+$/, "", abstract); sub(/\.$/, "", abstract)
                print ".SH NAME"; print name " \\- " esc(abstract)
                section("SYNOPSIS"); section("DESCRIPTION")
                for (i = 1; i <= n; i++) section(order[i])
            }
        ' <<<"$help"
    } >"$output"
}

manual=$(find_generate_manual)
for program in rulesd rulesctl; do
    section=$(section_of "$program")
    page="$work/man/$program.$section"
    mkdir -p "$work/man"
    how=""
    if [ -n "$manpages_dir" ]; then
        [ -f "$manpages_dir/$program.$section" ] || die "$manpages_dir/$program.$section not found"
        cp "$manpages_dir/$program.$section" "$page"
        how="from $manpages_dir"
    fi
    if [ -z "$how" ] && [ -n "$manual" ]; then
        # generate-manual runs the program with --experimental-dump-help (swift-argument-parser).
        if "$manual" "$build_dir/$program" --section "$section" --date "$page_date" \
            --output-directory "$work/man" >"$work/generate-manual.log" 2>&1 && [ -s "$page" ]; then
            how="generate-manual"
        else
            note "warning: generate-manual failed for $program; using its --help instead" >&2
            sed 's/^/  /' "$work/generate-manual.log" >&2
        fi
    fi
    if [ -z "$how" ]; then
        if render_help_page "$program" "$section" "$page"; then
            how="rendered from --help"
        else
            note "warning: $program has no usable --help; no man page installed for it" >&2
            continue
        fi
    fi
    # Debian policy: man pages compressed with gzip -9; -n leaves out the name and time (reproducible).
    gzip -9n -c "$page" >"$page.gz"
    put 0644 "$page.gz" "$mandir/man$section/$program.$section.gz"
    note "man page $program($section) ($how) -> $destdir$mandir/man$section"
done

# --- shell completions (swift-argument-parser generates them from the command's definition) ----------------
completion_target() { # completion_target SHELL PROGRAM
    case "$1" in
        bash) echo "$datadir/bash-completion/completions/$2" ;;
        zsh) echo "$zsh_completions/_$2" ;;
        fish) echo "$datadir/fish/vendor_completions.d/$2.fish" ;;
    esac
}
completion_marker() { # what a real script of that shell contains; a program without completions prints none
    case "$1" in
        bash) echo 'complete ' ;;
        zsh) echo '#compdef' ;;
        fish) echo 'complete -c' ;;
    esac
}
for shell in bash zsh fish; do
    script="$work/completion.$shell"
    if "$build_dir/rulesctl" --generate-completion-script "$shell" >"$script" 2>/dev/null &&
        grep -q -- "$(completion_marker "$shell")" "$script"; then
        put 0644 "$script" "$(completion_target "$shell" rulesctl)"
        note "$shell completion -> $destdir$(completion_target "$shell" rulesctl)"
    else
        note "warning: rulesctl did not produce a $shell completion script; none installed" >&2
    fi
done

# --- editor support: the rule API's annotations for lua-language-server (rulesctl init points .luarc.json here) --
annotations=$datadir/rulesd/lua/rulesd.lua
put 0644 "$source_root/share/lua-annotations/rulesd.lua" "$annotations"
note "Lua annotations -> $destdir$annotations"

# --- configuration: examples only where the administrator has nothing yet -------------------------------------
confdir=$sysconfdir/rulesd
if [ -e "$destdir$confdir/rulesd.conf" ]; then
    note "keeping existing $destdir$confdir/rulesd.conf"
else
    install -D -m 0644 "$source_root/config/rulesd.conf" "$destdir$confdir/rulesd.conf"
    note "example configuration -> $destdir$confdir/rulesd.conf"
fi
# The daemon serves every rule file in the directory, so the examples never go there: enabling the service
# must not serve demo flags. They are documentation, installed (and recorded) under share/doc; the rules
# directory starts empty, which is a valid rule set, with a README saying where the examples are.
rules_src=$source_root/config/rules.d
examples=$datadir/doc/rulesd/examples
if [ -d "$rules_src" ] && [ -n "$(ls -A "$rules_src")" ]; then
    while IFS= read -r file; do
        put 0644 "$rules_src/$file" "$examples/rules.d/$file"
    done < <(cd "$rules_src" && find . -type f ! -name '.*' | sed 's|^\./||' | LC_ALL=C sort)
    put 0644 "$source_root/config/rulesd.conf" "$examples/rulesd.conf"
    note "example rules -> $destdir$examples"
fi
# The Python client is one module for applications to import or copy (docs/CLIENTS.md).
python_client=$datadir/rulesd/clients/python
put 0644 "$source_root/clients/python/rulesd_client.py" "$python_client/rulesd_client.py"
note "Python client -> $destdir$python_client"
rules_dst=$destdir$confdir/rules.d
if [ -d "$rules_dst" ] && [ -n "$(ls -A "$rules_dst")" ]; then
    note "keeping existing rules in $rules_dst"
else
    install -d -m 0755 "$rules_dst"
    install -m 0644 "$source_root/deploy/rules.d.README" "$rules_dst/README"
    note "empty rules directory -> $rules_dst (see its README)"
fi

# --- manifest -------------------------------------------------------------------------------------------------
if [ "$write_manifest" -eq 1 ]; then
    # Union with an earlier manifest: a reinstall must not forget files or directories the first run created.
    previous="$destdir$manifest"
    record_parents "$manifest"
    echo "f $manifest" >>"$work/manifest"
    if [ -f "$previous" ]; then grep -E '^[fd] /' "$previous" >>"$work/manifest" || true; fi
    {
        echo "# rulesd install manifest: what deploy/install.sh installed (read by deploy/uninstall.sh)."
        echo "# f = file, d = directory created by the installer (removed only when empty)."
        grep -E '^[fd] /' "$work/manifest" | awk '!seen[$0]++'
    } >"$work/manifest.final"
    install -D -m 0644 "$work/manifest.final" "$destdir$manifest"
    note "manifest -> $destdir$manifest"
fi

# --- activate on the live system (never when staging into DESTDIR); nothing is enabled or started -----------
if [ -z "$destdir" ] && [ "$(id -u)" -eq 0 ]; then
    if [ -n "$sysusers_installed" ] && command -v systemd-sysusers >/dev/null; then
        systemd-sysusers "$sysusers_installed"
    fi
    if [ -n "$tmpfiles_installed" ] && command -v systemd-tmpfiles >/dev/null; then
        systemd-tmpfiles --create "$tmpfiles_installed"
    fi
    if [ "$units_installed" -gt 0 ] && [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        note "units installed but not enabled; start with: systemctl enable --now rulesd.socket"
    fi
fi
