#!/usr/bin/env bash
# Create (idempotently) the LLaMA-Factory environment: .venv-llamafactory at the repository root.
#
# LLaMA-Factory 0.9.5 pins transformers<=5.6, trl<=0.24, peft<=0.18.1, accelerate<=1.11 and
# gradio<=5.50, which conflict with Axolotl's pins, so it lives in its own environment.
#
# CPU machines: llamafactory declares torchvision>=0.19 and torchaudio>=2.4. Every build of those
# pins one exact torch version, and none exists for torch 2.13 CPU (torchaudio stops at 2.11 on
# PyPI), so resolving them would either fail or drag in a different, CUDA, torch (GBs of nvidia-*
# wheels). This script therefore
#   1. installs llamafactory==0.9.5 itself without dependencies, with torch==2.13.0 pinned on the
#      same command line (the local CPU wheel from PIP_FIND_LINKS);
#   2. installs llamafactory's declared requirements, minus torchvision and torchaudio, read from
#      its own metadata, again with torch==2.13.0 pinned on the same command line.
# Nothing needs torchvision (transformers checks for it and does without). llamafactory's
# mm_plugin does `import torchaudio` unconditionally: our entry point `safeneuron-llamafactory`
# (integrations/llamafactory/compat.py) puts a minimal stand-in module in sys.modules when, and
# only when, the real torchaudio cannot be imported. LLaMA-Factory is not patched on disk; audio
# inputs (multimodal audio models) are unavailable in this environment, and say so if used.
#
# Also installed: pytest and playwright (Python). The browser is Debian's chromium
# (/usr/bin/chromium), installed with apt-get when missing; Playwright's own browser download is
# not used.
#
# Re-running is fast: a stamp keyed on this script's content skips the heavy install, and a
# second stamp keyed on pyproject.toml redoes only the editable install of this repository.
#
# Usage: bash scripts/env_llamafactory.sh     (prints the environment's python path at the end)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SAFENEURON_LLAMAFACTORY_VENV:-$ROOT/.venv-llamafactory}"
PYTHON="${PYTHON:-python3.11}"
LLAMAFACTORY_VERSION="0.9.5"
TORCH_VERSION="2.13.0"
# shellcheck source=scripts/_lib.sh
source "$ROOT/scripts/_lib.sh"

log() { echo "[env_llamafactory] $*" >&2; }

# The browser for the web UI tests (Debian's package; no browser download from elsewhere).
if [[ ! -x /usr/bin/chromium ]]; then
    if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null; then
        log "installing Debian's chromium (web UI tests)"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        log "warning: /usr/bin/chromium is missing; the web UI tests will be skipped"
    fi
fi

deps_key="$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)"
deps_stamp="$VENV/.safeneuron-deps-stamp"

if [[ ! -f "$deps_stamp" || "$(cat "$deps_stamp")" != "$deps_key" ]]; then
    log "building $VENV (llamafactory==$LLAMAFACTORY_VERSION, torch==$TORCH_VERSION CPU)"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    PIP=(pip_install "$VENV")
    "${PIP[@]}" --upgrade pip
    # 1. llamafactory alone (its torchvision/torchaudio requirements cannot be met on CPU torch 2.13).
    "${PIP[@]}" --no-deps "llamafactory==$LLAMAFACTORY_VERSION" "torch==$TORCH_VERSION"
    # 2. Its requirements from its own metadata, less torchvision/torchaudio, torch pinned alongside.
    mapfile -t reqs < <("$VENV/bin/python" - <<'PY'
import re
from importlib.metadata import requires
skip = {"torch", "torchvision", "torchaudio"}
for req in requires("llamafactory") or []:
    if ";" in req and "extra" in req.split(";", 1)[1]:
        continue  # optional extras
    name = re.split(r"[<>=!~ ;\[]", req, maxsplit=1)[0].strip().lower()
    if name not in skip:
        print(req.split(";", 1)[0].strip())
PY
)
    "${PIP[@]}" "torch==$TORCH_VERSION" "${reqs[@]}" "pytest>=8" "playwright"
    # Never keep a CUDA build of anything, nor torchvision/torchaudio wheels that cannot load.
    "$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio 2>/dev/null || true
    assert_cpu_torch "$VENV" "$TORCH_VERSION"
    echo "$deps_key" > "$deps_stamp"
    rm -f "$VENV/.safeneuron-repo-stamp"
fi

# This repository, editable and without dependencies (they are the ones above).
editable_install "$VENV" "$ROOT"

echo "$VENV/bin/python"
