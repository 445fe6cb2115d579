#!/usr/bin/env bash
# Sets up a virtual environment in .venv (Python >= 3.11 and pip are all it needs),
# installs flaxinit with its dev extra, then runs one job:
#   ./quickstart.sh demo   the main job: the doctor compares initializations of a deep
#                          ReLU MLP on real data (table, verdicts, plots in results/doctor/)
#   ./quickstart.sh test   lint (ruff), the docs site (mkdocs build --strict) and the
#                          whole test suite (pytest, 2 workers)
# Extra arguments go to the job (e.g. ./quickstart.sh test -k orthogonal).
set -euo pipefail
cd "$(dirname "$0")"

job="${1:-}"
shift || true
python="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'

case "$job" in
  demo)
    exec .venv/bin/python -m flaxinit.doctor "$@"
    ;;
  test)
    .venv/bin/ruff check .
    .venv/bin/ruff format --check .
    NO_MKDOCS_2_WARNING=1 .venv/bin/python -m mkdocs build --strict --quiet --site-dir site
    exec .venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" "$@"
    ;;
  *)
    echo "usage: ./quickstart.sh demo|test [args...]" >&2
    exit 2
    ;;
esac
