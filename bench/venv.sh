#!/usr/bin/env bash
# Create or update the benchmark virtualenvs (never committed):
#   bench/.venv      peers + conveyor (editable, from this repository) + psutil, py-spy
#   bench/.venv-arq  arq, whose redis pin conflicts with the others
# Re-installs only when a requirements file changed. Usage: bench/venv.sh [--force]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null || py=python3

make_venv() {  # dir requirements-file [extra pip args...]
  local dir="$1" req="$2"; shift 2
  local stamp="$dir/.bench-stamp"
  local want
  want="$(cat "$req" <(printf '%s' "$*") | sha256sum | cut -d' ' -f1)"
  if [[ "${FORCE:-}" != 1 && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return
  fi
  echo "bench: preparing $dir" >&2
  [[ -x "$dir/bin/python" ]] || "$py" -m venv "$dir"
  "$dir/bin/python" -m pip install -q --disable-pip-version-check -r "$req" "$@"
  echo "$want" > "$stamp"
}

[[ "${1:-}" == "--force" ]] && FORCE=1
make_venv "$here/.venv" "$here/requirements.txt" -e "$root[redis,postgres]"
make_venv "$here/.venv-arq" "$here/requirements-arq.txt"
