#!/usr/bin/env bash
# Validates the Kubernetes manifests offline: schema (kubernetes-validate, bundled OpenAPI schemas, no cluster)
# and style (yamllint). Needs python3 with venv and access to PyPI the first time; later runs reuse the venv.
#
# Usage: deploy/kubernetes/validate.sh [MANIFEST...]   (default: daemonset.yaml and sidecar.yaml)
# Environment:
#   RULESD_K8S_VENV   where the venv lives (default ${XDG_CACHE_HOME:-$HOME/.cache}/rulesd-k8s-venv)
#   K8S_VERSION       the oldest cluster version to validate against (default 1.28.0: native sidecars)
#   PYTHON            the interpreter that creates the venv (default python3)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# Pinned: a schema or lint rule that changes under us must not turn CI red (or green) by itself.
KUBERNETES_VALIDATE_VERSION=1.37.0
YAMLLINT_VERSION=1.38.0
K8S_VERSION=${K8S_VERSION:-1.28.0}
PYTHON=${PYTHON:-python3}
venv=${RULESD_K8S_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/rulesd-k8s-venv}

if [ "$#" -gt 0 ]; then
    manifests=("$@")
else
    manifests=("$here/daemonset.yaml" "$here/sidecar.yaml")
fi

# A marker records what the venv holds, so a version bump above rebuilds it instead of silently using old tools.
want="kubernetes-validate==$KUBERNETES_VALIDATE_VERSION yamllint==$YAMLLINT_VERSION"
marker="$venv/.rulesd-tools"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$marker" 2>/dev/null)" != "$want" ]; then
    echo "== creating $venv ($want)"
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    "$PYTHON" -m venv "$venv"
    # Word splitting of $want is intended: it is the list of requirements.
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $want
    echo "$want" >"$marker"
fi

status=0

echo "== kubernetes-validate $KUBERNETES_VALIDATE_VERSION --strict -k $K8S_VERSION"
# --strict rejects unknown fields (a misspelt `volumeMount` passes without it).
if ! "$venv/bin/kubernetes-validate" --strict -k "$K8S_VERSION" "${manifests[@]}"; then
    status=1
fi

echo "== yamllint $YAMLLINT_VERSION"
if ! "$venv/bin/yamllint" --strict -c "$here/.yamllint" "${manifests[@]}"; then
    status=1
fi

# Schemas allow subPath, but a subPath mount never receives ConfigMap updates, which defeats hot reload.
echo "== no subPath mounts"
if grep -nE '^[[:space:]]*(- )?subPath(Expr)?[[:space:]]*:' "${manifests[@]}"; then
    echo "subPath mounts never see ConfigMap updates; mount the whole ConfigMap as a directory" >&2
    status=1
fi

# The rules inside the ConfigMaps must load too: a manifest that passes every schema but ships a syntax error
# would be refused by every pod. Needs a rulesctl binary: $RULESCTL (what `make test-k8s` passes: the one this
# checkout builds), else this checkout's debug or release build, else one on PATH. Without one the check fails:
# manifests whose rules were never loaded are not "ok".
rulesctl=${RULESCTL:-}
if [ -n "$rulesctl" ] && [ ! -x "$rulesctl" ]; then
    echo "== RULESCTL=$rulesctl is not an executable" >&2
    rulesctl="" status=1
elif [ -z "$rulesctl" ]; then
    for candidate in "$here/../../.build/debug/rulesctl" "$here/../../.build/release/rulesctl" \
        "$(command -v rulesctl 2>/dev/null || true)"; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then rulesctl=$candidate; break; fi
    done
fi
if [ -n "$rulesctl" ]; then
    echo "== rulesctl check on the ConfigMaps' rules ($rulesctl)"
    rules_tmp=$(mktemp -d "${TMPDIR:-/tmp}/rulesd-k8s-rules.XXXXXX")
    trap 'rm -rf "$rules_tmp"' EXIT
    # PyYAML is in the venv already (both tools depend on it). One directory per ConfigMap, one file per key.
    "$venv/bin/python" - "$rules_tmp" "${manifests[@]}" <<'PY'
import os, sys, yaml
out = sys.argv[1]
for path in sys.argv[2:]:
    with open(path) as f:
        for doc in yaml.safe_load_all(f):
            if not doc or doc.get("kind") != "ConfigMap":
                continue
            name = doc["metadata"]["name"]
            target = os.path.join(out, name)
            os.makedirs(target, exist_ok=True)
            for key, text in (doc.get("data") or {}).items():
                with open(os.path.join(target, key), "w") as rule:
                    rule.write(text)
PY
    for dir in "$rules_tmp"/*/; do
        [ -d "$dir" ] || continue
        echo "-- ConfigMap $(basename "$dir")"
        if ! "$rulesctl" check "$dir"; then status=1; fi
    done
else
    echo "== rulesctl not found (swift build, or set RULESCTL): the ConfigMaps' rules cannot be checked" >&2
    status=1
fi

if [ "$status" -eq 0 ]; then
    echo "== manifests ok"
else
    echo "== manifests FAILED" >&2
fi
exit "$status"
