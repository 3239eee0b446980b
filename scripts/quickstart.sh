#!/usr/bin/env bash
# README command 1: set up on a fresh machine and run the main job on the embedded default model.
# Extra arguments go to `safeneuron quickstart` (e.g. a model directory, --output-dir).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/safeneuron" quickstart "$@"
