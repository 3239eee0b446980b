#!/usr/bin/env bash
# README command 2: set up every environment on a fresh machine and run the whole test suite:
# the core and trl adapter in .venv, then the Axolotl and LLaMA-Factory adapters in their own
# environments (their pins conflict, see README).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export SAFENEURON_CACHE="${SAFENEURON_CACHE:-$ROOT/.venv/cache}"

bash scripts/setup.sh
.venv/bin/ruff check safeneuron_plugins integrations tests bench
.venv/bin/python -m pytest tests/core "$@"

if [[ -d tests/axolotl ]]; then
    bash scripts/env_axolotl.sh >/dev/null
    .venv-axolotl/bin/python -m pytest tests/axolotl "$@"
fi
if [[ -d tests/llamafactory ]]; then
    bash scripts/env_llamafactory.sh >/dev/null
    .venv-llamafactory/bin/python -m pytest tests/llamafactory "$@"
fi
