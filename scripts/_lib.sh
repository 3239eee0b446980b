# Shared by scripts/setup.sh, scripts/env_axolotl.sh and scripts/env_llamafactory.sh (sourced, not run).

# pip_install VENV ARGS...: pip install --quiet into VENV. A pip configuration that names package indexes
# holding no copy of some package makes pip warn "Location ... is ignored" once per package and index;
# those lines say nothing about this install and are dropped, everything else pip prints is kept.
pip_install() {
    local venv="$1"
    shift
    local rc=0
    "$venv/bin/python" -m pip install --quiet "$@" 2>&1 \
        | { grep -v "is ignored: it is neither a file nor a directory" >&2 || true; } || rc="${PIPESTATUS[0]}"
    return "$rc"
}

# editable_install VENV ROOT: install this repository into VENV, editable and without dependencies
# (the environment's own pins provide them). A stamp keyed on pyproject.toml makes re-runs free;
# pip's output goes to a log shown only on failure.
editable_install() {
    local venv="$1" root="$2"
    [[ -f "$root/pyproject.toml" ]] || return 0
    local key stamp="$venv/.safeneuron-repo-stamp" log_file="$venv/.safeneuron-repo-install.log"
    key="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
    if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$key" ]]; then
        { "$venv/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e "$root" \
            || "$venv/bin/python" -m pip install --quiet --no-deps -e "$root"; } >"$log_file" 2>&1 \
            || { cat "$log_file" >&2; return 1; }
        echo "$key" > "$stamp"
    fi
}

# assert_cpu_torch VENV VERSION [ALLOWED_REGEX]: fail when any nvidia-* package other than those
# matching ALLOWED_REGEX got installed, or when torch is not the CPU build of VERSION.
assert_cpu_torch() {
    local venv="$1" version="$2" allowed="${3:-^$}" cuda_pkgs
    cuda_pkgs="$("$venv/bin/python" -m pip list 2>/dev/null | grep -i '^nvidia' | grep -Eiv "$allowed" || true)"
    if [[ -n "$cuda_pkgs" ]]; then
        echo "error: CUDA packages were installed into $venv; torch must be the local CPU wheel:" >&2
        echo "$cuda_pkgs" >&2
        return 1
    fi
    "$venv/bin/python" - "$version" <<'PY'
import sys
import torch
assert torch.__version__.split("+")[0] == sys.argv[1], f"expected torch {sys.argv[1]}, got {torch.__version__}"
assert not torch.version.cuda, f"expected a CPU build of torch, got CUDA {torch.version.cuda}"
PY
}
