# Sourced by scripts/test and scripts/run-sim: make (or refresh) the project venv.
# A fresh Debian / Raspberry Pi OS machine needs only python3 (with venv) for this.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MCK_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "error: microcurrent-kiosk needs Python >= 3.11 as '$PY'" >&2
    exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PY" -m venv "$VENV" 2>/dev/null; then
        echo "error: '$PY -m venv' failed; on Debian install it with: apt-get install python3-venv" >&2
        exit 2
    fi
fi
# Re-install only when the project metadata changed since the last install.
STAMP="$VENV/.mck-installed"
EXTRAS="${MCK_EXTRAS:-dev}"
WANT="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)-$EXTRAS"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[$EXTRAS]"
    echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
