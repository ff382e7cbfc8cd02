#!/usr/bin/env bash
# Install exactly the locked set (uv.lock) into .venv, then check that .venv holds it.
#
#   scripts/bootstrap.sh                 install the lock (what make demo, make test and CI do)
#   scripts/bootstrap.sh lock [ARGS]     re-resolve uv.lock (`uv lock ARGS`), e.g. after editing
#                                        pyproject.toml, or `lock --upgrade-package prefect`
#
# Every entry point installs through here: `make demo`, `make test`, `scripts/stack.sh up` and so
# CI. uv itself comes at the version pinned below, from PyPI, into .tools/ (nothing global).
# A .venv that drifted from the lock (a hand `pip install`) is put back; a uv.lock that no longer
# matches pyproject.toml is an error: update it on purpose with `make lock` (see the README).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
UV_VERSION=0.13.9
uv=.tools/uv/bin/uv
export UV_PYTHON_DOWNLOADS=never UV_NO_PROGRESS=1

if [[ ! -x $uv ]] || [[ $("$uv" --version) != "uv $UV_VERSION"* ]]; then
  rm -rf .tools/uv
  "$python" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target .tools/uv "uv==$UV_VERSION"
fi
if [[ ${1:-} == lock ]]; then
  shift
  exec "$uv" lock --python "$python" "$@"
fi
# --locked: refuse a lock that pyproject.toml has outgrown, rather than resolve anew.
"$uv" sync --locked --extra test --python "$python" --quiet
# The check that catches what install alone would not: the environment tests and the stack run in
# is the locked one, package for package.
if ! "$uv" sync --locked --extra test --check --quiet 2>.venv/lock-check.txt; then
  echo "bootstrap: .venv does not hold the versions of uv.lock:" >&2
  cat .venv/lock-check.txt >&2
  exit 1
fi
