#!/usr/bin/env bash
# The built package as a user gets it: `bash scripts/check_dist.sh DIST` (`make dist-check`).
#
# Checks that the wheel and the sdist in DIST carry the LICENSE, installs the wheel with the
# `notebooks` extra into a new venv in a temporary directory outside the checkout, and from there
# runs `qwed-guard demo --n 5`, `python -m qwed_guard` and the first tutorial notebook.
set -euo pipefail

DIST=$(cd "${1:?usage: $0 DIST}" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON="${PYTHON:-python3.11}"

log() { printf 'dist-check: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

shopt -s nullglob
wheels=("$DIST"/*.whl)
sdists=("$DIST"/*.tar.gz)
[[ ${#wheels[@]} -eq 1 && ${#sdists[@]} -eq 1 ]] || die "expected one wheel and one sdist in $DIST"
wheel=${wheels[0]}
sdist=${sdists[0]}

# Listings into variables: `grep -q` on a pipe would cut it short under pipefail.
listing=$("$PYTHON" -m zipfile -l "$wheel")
grep -q '\.dist-info/licenses/LICENSE ' <<<"$listing" || die "no LICENSE in $wheel"
listing=$(tar -tzf "$sdist")
grep -q '^[^/]*/LICENSE$' <<<"$listing" || die "no LICENSE in $sdist"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK" # nothing of the checkout on the path
"$PYTHON" -m venv venv
log "installing $(basename "$wheel")[notebooks] into a clean venv"
venv/bin/python -m pip install --quiet --no-compile --disable-pip-version-check "$wheel[notebooks]"

export QWED_QUIET=1
where=$(venv/bin/python -c 'import qwed_guard; print(qwed_guard.__file__)')
[[ $where == "$WORK"/venv/* ]] || die "qwed_guard imported from $where, not the clean venv"
version=$(venv/bin/python -c 'import qwed_guard; print(qwed_guard.__version__)')
[[ $(basename "$wheel") == qwed_guard-"$version"-* ]] || die "version $version is not the wheel's"

venv/bin/qwed-guard demo --n 5 --audit "$WORK/demo.audit.jsonl" >demo.out
grep -q 'verified' demo.out || die "qwed-guard demo printed no summary: $(cat demo.out)"
cmp <(venv/bin/python -m qwed_guard demo --help) <(venv/bin/qwed-guard demo --help) ||
    die "python -m qwed_guard differs from qwed-guard"

cp "$ROOT/notebooks/01-retry.ipynb" .
venv/bin/jupyter execute --timeout=300 01-retry.ipynb 2>notebook.err ||
    die "01-retry.ipynb failed in the clean venv: $(tail -n 20 notebook.err)"
log "ok: $(basename "$wheel") and $(basename "$sdist") (LICENSE in both), demo, python -m, notebook 01"
