#!/usr/bin/env bash
# The tutorial's own stack, for machines that must stay on CUDA 11.8: torch 2.1.1+cu118, auto-gptq 0.7.1 compiled
# from source against it (the tutorial's `pip install git+...AutoGPTQ.git@v0.7.1`; PyPI's sdist is the same
# release), transformers 4.37.2 + optimum 1.17.1 + peft 0.8.2. The page and the commands are the same as on the
# modern stack (`.venv/bin/python app.py`, `python env/doctor.py`); what differs:
#   - kernels: auto-gptq's ExLlamaV2 (what optimum 1.17 reaches; no Marlin) or its CUDA kernel; no fast engine
#     (it is built on gptqmodel's kernels), so generation is the plain transformers path;
#   - no demo model (building it needs gptqmodel), no CPU mode, `download.py --source hf` untested
#     (huggingface_hub stays at 0.20 for transformers 4.37); ModelScope downloads work.
#
#   bash env/legacy-cu118/setup.sh
#
# Needs: Linux x86_64 (or WSL2), an NVIDIA driver that runs CUDA 11.8 (>= 520 recommended; nvidia-smi shows
# "CUDA Version: 11.8" or newer), the CUDA 11.8 toolkit (nvcc 11.8: on PATH, or CUDA_HOME=/usr/local/cuda-11.8),
# gcc 11 or older (CUDA 11.8's newest host compiler), Python 3.11 (streamlit 1.67 needs 3.11).
# Options through the environment:
#   PYTHON=python3.11   VENV=.venv   PIP_INDEX_URL=<PyPI mirror>   TORCH_INDEX_URL=<mirror of whl/cu118>
#   MAX_JOBS=N          parallel compile jobs for auto-gptq (default: all cores)
# Not run on a machine with a GPU and CUDA 11.8 and access to download.pytorch.org. What was checked is
# said in docs/environment.md ("The tutorial's stack").
set -euo pipefail
cd "$(dirname "$0")/../.."
here=env/legacy-cu118
die() { printf '\nError: %s\n' "$1" >&2; [ -n "${2:-}" ] && printf 'Fix: %s\n' "$2" >&2; exit 1; }
step() { printf '\n==> %s\n' "$*"; }

PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cu118}

command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 ||
  die "no NVIDIA GPU (nvidia-smi fails)" "this recipe is for CUDA 11.8 GPUs; without a GPU use bash env/setup.sh"
driver_cuda=$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' | head -n 1)
awk -v v="${driver_cuda:-0}" 'BEGIN { split(v, p, "."); exit !(p[1] > 11 || (p[1] == 11 && p[2] >= 8)) }' ||
  die "the driver runs CUDA ${driver_cuda:-?}, older than 11.8" "update the NVIDIA driver (520 or newer)"
capability=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | sort -u | paste -sd';')
step "GPU: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1), compute capability $capability, \
driver CUDA $driver_cuda"

nvcc=${CUDA_HOME:+$CUDA_HOME/bin/}nvcc
[ -x "$(command -v "$nvcc")" ] || nvcc=/usr/local/cuda-11.8/bin/nvcc
"$nvcc" --version 2>/dev/null | grep -q "release 11.8" ||
  die "nvcc 11.8 not found (auto-gptq must be compiled with the CUDA torch was built with)" \
    "install the CUDA 11.8 toolkit (cuda_11.8.0_520.61.05_linux.run, toolkit only) and export CUDA_HOME=/usr/local/cuda-11.8"
export CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$(command -v "$nvcc")")")}
export PATH="$CUDA_HOME/bin:$PATH"
gcc_major=$(gcc -dumpversion 2>/dev/null | cut -d. -f1)
[ "${gcc_major:-0}" -le 11 ] ||
  echo "Warning: gcc $gcc_major is newer than CUDA 11.8 supports (11); if the build fails: CC=gcc-11 CXX=g++-11"

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys, transformers; sys.exit(int(transformers.__version__[0]) < 5)' 2>/dev/null; then
  die "$VENV holds the modern stack (transformers 5)" "mv $VENV $VENV-modern, or VENV=.venv-legacy bash $here/setup.sh"
fi
if [ ! -x "$VENV/bin/python" ]; then
  command -v "$PYTHON" >/dev/null || die "$PYTHON not found" "install Python 3.11 (e.g. conda create -n qwen python=3.11)"
  step "Creating $VENV ($($PYTHON --version))"
  "$PYTHON" -m venv "$VENV"
fi
py=$VENV/bin/python
pip=("$py" -m pip install --progress-bar off)

if ! "$py" -c 'import torch, sys; sys.exit(torch.__version__ != "2.1.1+cu118")' 2>/dev/null; then
  step "Installing torch 2.1.1+cu118 from $TORCH_INDEX_URL"
  "${pip[@]}" --index-url "$TORCH_INDEX_URL" "torch==2.1.1+cu118"
fi
"${pip[@]}" "setuptools<70" wheel ninja  # auto-gptq 0.7.1's setup.py needs distutils' get_python_lib

step "Installing the pinned set; auto-gptq 0.7.1 compiles for compute capability $capability (several minutes)"
# Marlin is not compiled: optimum 1.17 never selects it, and it needs compute capability 8.0+.
TORCH_CUDA_ARCH_LIST=$capability BUILD_CUDA_EXT=1 COMPILE_MARLIN=0 \
  "${pip[@]}" --no-build-isolation --no-binary auto-gptq -r "$here/requirements.txt"

"$py" - <<'PY'
import auto_gptq, exllamav2_kernels, optimum, torch, transformers  # noqa: F401  (the compiled kernels must import)
assert torch.cuda.is_available(), "torch does not see the GPU"
print(f"torch {torch.__version__}, transformers {transformers.__version__}, auto-gptq {auto_gptq.__version__}")
PY
step "Checking the set-up (python env/doctor.py)"
"$py" env/doctor.py || die "something above (✗) blocks chatting" "run the command on its 'fix:' line"
step "Ready. Start the app with: $VENV/bin/python app.py --model /path/to/Qwen1.5-7B-Chat-GPTQ-Int4"
