#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment and the system packages the python
# sandbox needs. Sourced by ./appo and ./test; safe to run repeatedly (a stamp skips pip when the
# pinned requirements have not changed).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${APPO_VENV:-$root/.venv}"
python="${APPO_PYTHON:-python3}"

need_system=()
command -v bwrap >/dev/null 2>&1 || need_system+=(bubblewrap)
# The sandbox runs Debian's interpreter as an unprivileged user; models use numpy/sympy in it.
if ! /usr/bin/python3 -c "import numpy, sympy" >/dev/null 2>&1; then need_system+=(python3-numpy python3-sympy); fi
if [ "${#need_system[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[appo] installing system packages: ${need_system[*]}" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_system[@]}" >/dev/null
  else
    echo "[appo] missing system packages for the python sandbox: ${need_system[*]}" >&2
    echo "[appo] install them with: sudo apt-get install -y ${need_system[*]}" >&2
  fi
fi

stamp_src="$(cat "$root/requirements/"*.txt "$root/pyproject.toml" | sha256sum | cut -c1-16)"
stamp_file="$venv/.appo-stamp"
if [ ! -x "$venv/bin/python" ]; then
  echo "[appo] creating virtual environment in $venv" >&2
  "$python" -m venv "$venv"
fi
if [ "$(cat "$stamp_file" 2>/dev/null)" != "$stamp_src" ]; then
  echo "[appo] installing pinned dependencies (first run takes a few minutes)" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$root/requirements/dev.txt"
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps -e "$root"
  echo "$stamp_src" > "$stamp_file"
fi
