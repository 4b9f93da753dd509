#!/usr/bin/env bash
# Create the peer virtual environments under benchmarks/peers/.venvs/ (git-ignored).
#
#   keras-tf   keras 3 + tensorflow-cpu   (run with KERAS_BACKEND=tensorflow)
#   keras-jax  keras 3 + jax[cpu]         (run with KERAS_BACKEND=jax)
#   torch      torch (CPU build) + numpy  (the plain PyTorch recipe)
#
# Idempotent: an environment that already exists and whose packages import is skipped.
# A broken/half-built environment is deleted and rebuilt.
#
# Usage:  bash benchmarks/peers/setup.sh [keras-tf] [keras-jax] [torch]   (default: all three)
# Override pins with env vars, e.g.  TF_SPEC='tensorflow-cpu==2.20.*' bash benchmarks/peers/setup.sh keras-tf
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENVS="$HERE/.venvs"
PYTHON="${PYTHON:-python3}"

KERAS_SPEC="${KERAS_SPEC:-keras==3.15.1}"
TF_SPEC="${TF_SPEC:-tensorflow-cpu==2.21.0}"
JAX_SPEC="${JAX_SPEC:-jax[cpu]==0.10.2}"
# torch 2.13.0 comes from the local wheel directory (/opt/wheels, +cpu build); no torchvision.
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
NUMPY_SPEC="${NUMPY_SPEC:-numpy}"
# scipy is needed only by Keras's legacy ImageDataGenerator (keras_mnist.py --augment legacy).
SCIPY_SPEC="${SCIPY_SPEC:-scipy}"

mkdir -p "$VENVS"

env_ok() {  # env_ok NAME "python code": imports the env's packages; on success prints its versions
    local py="$VENVS/$1/bin/python" out
    [[ -x "$py" ]] || return 1
    out="$("$py" -c "$2; print(VERS)" 2>/dev/null)" || return 1
    echo "[setup] $1 versions: $out"
}

make_env() {  # make_env NAME "check code" SPEC...
    local name="$1" check="$2"; shift 2
    local py="$VENVS/$name/bin/python"
    if env_ok "$name" "$check"; then
        echo "[setup] $name: already present, skipping"
        return 0
    fi
    if [[ -x "$py" ]] && "$py" -m pip --version >/dev/null 2>&1; then
        # Exists but fails the check (e.g. a package was added to the spec): top it up in place.
        echo "[setup] $name: present but incomplete, installing into it ($*)"
        "$py" -m pip install --quiet "$@" 2>&1 | grep -v "^WARNING: Location" || true
    fi
    if ! env_ok "$name" "$check" >/dev/null; then
        echo "[setup] $name: creating from scratch ($*)"
        rm -rf "$VENVS/$name"
        "$PYTHON" -m venv "$VENVS/$name"
        "$py" -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
        "$py" -m pip install --quiet "$@" 2>&1 | grep -v "^WARNING: Location" || true
    fi
    if ! env_ok "$name" "$check"; then
        echo "[setup] $name: FAILED import check" >&2
        "$py" -c "$check" || true
        return 1
    fi
    echo "[setup] $name: ok"
}

# Quieten TensorFlow's C++ start-up logging in the checks.
export TF_CPP_MIN_LOG_LEVEL=3

KERAS_TF_CHECK='import os; os.environ["KERAS_BACKEND"]="tensorflow"; import numpy, scipy.ndimage, tensorflow as tf, keras; assert keras.__version__.startswith("3."); VERS=f"keras {keras.__version__}, tensorflow {tf.__version__}, numpy {numpy.__version__}, scipy {scipy.__version__}"'
KERAS_JAX_CHECK='import os; os.environ["KERAS_BACKEND"]="jax"; import numpy, scipy.ndimage, jax, jaxlib, keras; assert keras.__version__.startswith("3."); VERS=f"keras {keras.__version__}, jax {jax.__version__}, jaxlib {jaxlib.__version__}, numpy {numpy.__version__}, scipy {scipy.__version__}"'
TORCH_CHECK='import numpy, torch; VERS=f"torch {torch.__version__}, numpy {numpy.__version__}"'

targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=(keras-tf keras-jax torch)

status=0
for t in "${targets[@]}"; do
    case "$t" in
        keras-tf)  make_env keras-tf  "$KERAS_TF_CHECK"  "$TF_SPEC" "$KERAS_SPEC" "$NUMPY_SPEC" "$SCIPY_SPEC" || status=1 ;;
        keras-jax) make_env keras-jax "$KERAS_JAX_CHECK" "$JAX_SPEC" "$KERAS_SPEC" "$NUMPY_SPEC" "$SCIPY_SPEC" || status=1 ;;
        torch)     make_env torch     "$TORCH_CHECK"     "$TORCH_SPEC" "$NUMPY_SPEC" || status=1 ;;
        *) echo "[setup] unknown env '$t' (expected keras-tf, keras-jax, torch)" >&2; status=1 ;;
    esac
done
exit $status
