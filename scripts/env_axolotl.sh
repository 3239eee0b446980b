#!/usr/bin/env bash
# Create (idempotently) the Axolotl environment: .venv-axolotl at the repository root.
#
# Axolotl's pins conflict with LLaMA-Factory's, so it lives in its own environment. torch is
# pinned on the same pip command line as axolotl so that pip takes the local CPU wheel
# (PIP_FIND_LINKS) instead of downloading a CUDA build. Re-running is fast: a stamp keyed on
# this script's content skips the heavy install, and a second stamp keyed on pyproject.toml
# redoes only the editable install of this repository.
#
# Usage: bash scripts/env_axolotl.sh        (prints the environment's python path at the end)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SAFENEURON_AXOLOTL_VENV:-$ROOT/.venv-axolotl}"
PYTHON="${PYTHON:-python3.11}"
AXOLOTL_VERSION="0.19.0"
TORCH_VERSION="2.13.0"
# shellcheck source=scripts/_lib.sh
source "$ROOT/scripts/_lib.sh"

deps_key="$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)"
deps_stamp="$VENV/.safeneuron-deps-stamp"

if [[ ! -f "$deps_stamp" || "$(cat "$deps_stamp")" != "$deps_key" ]]; then
    echo "[env_axolotl] building $VENV (axolotl==$AXOLOTL_VERSION, torch==$TORCH_VERSION)" >&2
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    pip_install "$VENV" --upgrade pip
    # One command line: axolotl and torch resolve together, torch from the local CPU wheel.
    pip_install "$VENV" "axolotl==$AXOLOTL_VERSION" "torch==$TORCH_VERSION" "pytest>=8"
    # nvidia-ml-py (pure-Python NVML bindings, an axolotl dependency) is the only nvidia package allowed.
    assert_cpu_torch "$VENV" "$TORCH_VERSION" '^nvidia-ml-py '
    echo "$deps_key" > "$deps_stamp"
    rm -f "$VENV/.safeneuron-repo-stamp"
fi

# This repository, editable and without dependencies (they are the ones above).
editable_install "$VENV" "$ROOT"

echo "$VENV/bin/python"
