#!/usr/bin/env bash
# The Dockerfile's install steps, one script so that they run (and are tested: tests/test_dockerfile.py)
# outside Docker exactly as inside it.
#
# Usage: bash scripts/docker_install.sh [--python PY] [--simulate-apt] [--dry-run] STEP ...
#   system        apt-get install cmake g++ python3-dev (Horovod's build tools), only when WITH_HOROVOD=1
#                 and cmake or g++ is missing; --simulate-apt only resolves the packages (apt-get -s)
#   requirements  pip install -r requirements.txt; the base image's TensorFlow must equal the pin, so
#                 pip keeps it (checked). KEEP_TENSORFLOW=1 (e.g. NVIDIA's NGC TensorFlow image, the one
#                 with TF-TRT) keeps whatever TensorFlow the image has and installs tf-keras and
#                 tensorboard of its major.minor instead of the pins (untested combinations)
#   horovod       build Horovod 0.28.1 against that TensorFlow (scripts/install_horovod.sh), unless
#                 WITH_HOROVOD=0 or `import horovod.tensorflow` already works (NGC images ship it):
#                 with a CUDA toolkit (nvcc and cuda.h under $HOROVOD_CUDA_HOME, $CUDA_HOME,
#                 /usr/local/cuda or nvcc's prefix) HOROVOD_GPU_OPERATIONS=NCCL, NCCL taken from the
#                 TensorFlow wheel's nvidia-nccl-cu12 package (site-packages/nvidia/nccl) or the
#                 system (libnccl-dev); without one, Gloo CPU operations only. --dry-run prints the
#                 build environment it chose and builds nothing.
# Environment: PYTHON (default python3), WITH_HOROVOD (default 1), KEEP_TENSORFLOW (default 0);
#   HOROVOD_GPU_OPERATIONS set (NCCL, or empty for CPU operations) replaces the CUDA detection;
#   HOROVOD_NCCL_HOME or HOROVOD_NCCL_INCLUDE + HOROVOD_NCCL_LIB replace the NCCL search.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"
simulate_apt=0
dry_run=0
steps=()
while [ $# -gt 0 ]; do
  case "$1" in
    --python) PY="$2"; shift 2 ;;
    --simulate-apt) simulate_apt=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    system|requirements|horovod) steps+=("$1"); shift ;;
    *) echo "docker_install: unknown argument '$1' (steps: system requirements horovod)" >&2; exit 2 ;;
  esac
done
[ ${#steps[@]} -gt 0 ] || { echo "usage: $0 [--python PY] [--simulate-apt] [--dry-run] system|requirements|horovod ..." >&2; exit 2; }
WITH_HOROVOD="${WITH_HOROVOD:-1}"
KEEP_TENSORFLOW="${KEEP_TENSORFLOW:-0}"
APT_PACKAGES=(cmake g++ python3-dev)
say() { echo "docker_install: $*"; }
die() { echo "docker_install: $*" >&2; exit 1; }
py_quiet() { TF_CPP_MIN_LOG_LEVEL=3 TF_USE_LEGACY_KERAS=1 "$PY" "$@"; }
tf_version() { py_quiet -c "import tensorflow as tf; print(tf.__version__)" 2>/dev/null || true; }
pin() { sed -n "s/^$1==\([^ #]*\).*/\1/p" "$here/requirements.txt"; }

step_system() {
  if [ "$WITH_HOROVOD" != 1 ]; then say "system: WITH_HOROVOD=$WITH_HOROVOD, no build tools needed"; return; fi
  if [ "$simulate_apt" = 1 ]; then  # resolves the names against the package lists, installs nothing
    apt-get install -s --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null \
      || die "apt-get cannot resolve ${APT_PACKAGES[*]}"
    say "system: apt-get resolves ${APT_PACKAGES[*]} (simulated)"
    return
  fi
  if command -v cmake >/dev/null && command -v g++ >/dev/null; then
    say "system: cmake and g++ present, nothing to install"
    return
  fi
  [ "$(id -u)" = 0 ] || die "cmake/g++ missing and not root: install ${APT_PACKAGES[*]}"
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${APT_PACKAGES[@]}"
  rm -rf /var/lib/apt/lists/*
}

step_requirements() {
  local want before after reqs
  want="$(pin tensorflow)"
  [ -n "$want" ] || die "requirements.txt has no tensorflow== pin"
  before="$(tf_version)"
  reqs="$here/requirements.txt"
  if [ "$KEEP_TENSORFLOW" = 1 ]; then
    [ -n "$before" ] || die "KEEP_TENSORFLOW=1, but $PY cannot import tensorflow"
    local mm
    mm="$(grep -oE '^[0-9]+\.[0-9]+' <<< "$before")"  # NGC versions look like 2.17.0+nv25.02
    reqs="$(mktemp)"
    grep -v -i -E '^[[:space:]]*(tensorflow|tf[-_]keras|tensorboard)[[:space:]]*==' "$here/requirements.txt" > "$reqs"
    say "requirements: keeping the image's TensorFlow $before (pin: $want); tf-keras and tensorboard ~= $mm"
    "$PY" -m pip install "tf-keras~=$mm.0" "tensorboard~=$mm.0"
  elif [ -n "$before" ] && [ "$before" != "$want" ]; then
    say "requirements: WARNING the base image has TensorFlow $before, requirements.txt pins $want: pip" \
        "replaces it (a large layer, without the image's own CUDA setup); use BASE_IMAGE=tensorflow/tensorflow:$want-gpu"
  fi
  "$PY" -m pip install -r "$reqs"  # the Dockerfile's PIP_NO_CACHE_DIR=1 keeps wheels out of the image
  [ "$reqs" = "$here/requirements.txt" ] || rm -f "$reqs"
  after="$(tf_version)"
  [ -n "$after" ] || die "requirements: tensorflow does not import after the install"
  if [ "$KEEP_TENSORFLOW" = 1 ]; then
    [ "$after" = "$before" ] || die "requirements: pip replaced the image's TensorFlow $before by $after"
  else
    [ "$after" = "$want" ] || die "requirements: TensorFlow is $after, requirements.txt pins $want"
  fi
  say "requirements: installed; TensorFlow $after"
}

cuda_home() {  # prints the CUDA toolkit root (nvcc + cuda.h) or nothing
  local dir nvcc
  nvcc="$(command -v nvcc || true)"
  for dir in "${HOROVOD_CUDA_HOME:-}" "${CUDA_HOME:-}" /usr/local/cuda "${nvcc:+$(dirname "$(dirname "$nvcc")")}"; do
    if [ -n "$dir" ] && [ -f "$dir/include/cuda.h" ] && [ -x "$dir/bin/nvcc" ]; then echo "$dir"; return; fi
  done
}

step_horovod() {
  if [ "$WITH_HOROVOD" != 1 ]; then say "horovod: WITH_HOROVOD=$WITH_HOROVOD, skipped"; return; fi
  if py_quiet -c "import horovod.tensorflow" >/dev/null 2>&1; then
    say "horovod: $(py_quiet -c 'import horovod; print(horovod.__version__)' 2>/dev/null) already importable, nothing to build"
    return
  fi
  [ -f "$here/scripts/install_horovod.sh" ] || die "scripts/install_horovod.sh is missing"
  local cuda nccl_dir links=""
  if [ -z "${HOROVOD_GPU_OPERATIONS+set}" ]; then
    cuda="$(cuda_home)"
  elif [ "$HOROVOD_GPU_OPERATIONS" = NCCL ]; then
    cuda="$(cuda_home)"
    [ -n "$cuda" ] || die "horovod: HOROVOD_GPU_OPERATIONS=NCCL, but no CUDA toolkit (nvcc + include/cuda.h)"
  elif [ -z "$HOROVOD_GPU_OPERATIONS" ]; then
    cuda=""
  else
    die "horovod: HOROVOD_GPU_OPERATIONS=$HOROVOD_GPU_OPERATIONS: expected NCCL, or empty for CPU operations"
  fi
  if [ -z "$cuda" ]; then
    unset HOROVOD_GPU_OPERATIONS
    say "horovod: no CUDA toolkit (nvcc + include/cuda.h) or HOROVOD_GPU_OPERATIONS empty: Gloo CPU operations only"
  else
    export HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_CUDA_HOME="$cuda"
    if [ -z "${HOROVOD_NCCL_HOME:-}${HOROVOD_NCCL_INCLUDE:-}" ]; then
      nccl_dir="$(py_quiet -c 'import importlib.util as u; s = u.find_spec("nvidia.nccl"); print(list(s.submodule_search_locations)[0])' 2>/dev/null || true)"
      if [ -n "$nccl_dir" ] && [ -f "$nccl_dir/include/nccl.h" ] && [ -e "$nccl_dir/lib/libnccl.so.2" ]; then
        # The wheel has only libnccl.so.2; horovod's FindNCCL looks for libnccl.so: link it for the
        # build, and record the wheel's directory as the run path so the library loads without LD_LIBRARY_PATH.
        links="$(mktemp -d)"
        ln -s "$nccl_dir/lib/libnccl.so.2" "$links/libnccl.so"
        export HOROVOD_NCCL_INCLUDE="$nccl_dir/include" HOROVOD_NCCL_LIB="$links" HOROVOD_NCCL_LINK=SHARED
        export LDFLAGS="${LDFLAGS:+$LDFLAGS }-Wl,-rpath,$nccl_dir/lib"
        say "horovod: CUDA toolkit $cuda, NCCL from the nvidia-nccl-cu12 wheel ($nccl_dir)"
      elif [ -f /usr/include/nccl.h ] || [ -f "$cuda/include/nccl.h" ]; then
        ls /usr/lib/*/libnccl_static.a "$cuda"/lib*/libnccl_static.a >/dev/null 2>&1 || export HOROVOD_NCCL_LINK=SHARED
        say "horovod: CUDA toolkit $cuda, the system's NCCL"
      else
        die "horovod: CUDA toolkit $cuda but no NCCL (pip install nvidia-nccl-cu12, apt-get install libnccl-dev," \
            "set HOROVOD_NCCL_HOME) or build with WITH_HOROVOD=0"
      fi
    fi
  fi
  if [ "$dry_run" = 1 ]; then
    say "horovod: would build with" \
      "$(env | grep -E '^(HOROVOD_(GPU_OPERATIONS|CUDA_HOME|NCCL_[A-Z]+)|LDFLAGS)=' | sort | tr '\n' ' ')"
    [ -z "$links" ] || rm -rf "$links"
    return
  fi
  PYTHON="$PY" bash "$here/scripts/install_horovod.sh"
  [ -z "$links" ] || rm -rf "$links"
  if [ -n "$cuda" ]; then
    py_quiet -c "import horovod.tensorflow as hvd; assert hvd.nccl_built(), 'horovod built without NCCL'" \
      || die "horovod: built, but without NCCL operations"
  fi
}

for step in "${steps[@]}"; do
  started=$SECONDS
  "step_$step"
  say "$step: done in $((SECONDS - started)) s"
done
