#!/usr/bin/env bash
# Build Horovod 0.28.1 from source into the project's Python (.venv) against the pinned TensorFlow,
# with Gloo (horovodrun --gloo) and without MPI, PyTorch or MXNet. Needs cmake and g++; no root.
# About 5-6 minutes on 2 cores. Idempotent: does nothing when `import horovod.tensorflow` already
# works (a wheel built for another TensorFlow fails that import, so a TF upgrade triggers a rebuild).
#
# Usage: bash scripts/install_horovod.sh            (PYTHON=/path/to/python to target another env)
#
# Why patching is needed (horovod 0.28.1 predates TF 2.19+): horovod/tensorflow/xla_mpi_ops.cc
# includes `tensorflow/compiler/xla/client/xla_builder.h`, which moved to `xla/hlo/builder/`, and,
# through TF's hash.h, the third-party headers farmhash.h and highwayhash/arch_specific.h, which the
# TF wheel ships under include/external/ but not on its include path. We rewrite that one include
# and put the wheel's own copies on CPLUS_INCLUDE_PATH (exactly the versions TF was built with; no
# Debian packages, no root). The same sources then compile for CPU and GPU (HOROVOD_GPU_OPERATIONS).
# horovod's Keras callbacks (`from keras import backend`, Keras 3) are left as they are: this
# project never imports horovod.tensorflow.keras; it calls hvd.allreduce/broadcast_variables from
# its own training loop (unet_medical/training/distributed.py).
# GPU builds: HOROVOD_GPU_OPERATIONS=NCCL, HOROVOD_CUDA_HOME and HOROVOD_NCCL_* are passed through from the
# environment (scripts/docker_install.sh sets them when it finds a CUDA toolkit and NCCL); then an
# existing build counts only if it has NCCL operations.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$here/.venv/bin/python}"
VERSION=0.28.1
[ -x "$PY" ] || { echo "install_horovod: $PY not found (run scripts/setup.sh first)" >&2; exit 1; }

probe() {
  TF_USE_LEGACY_KERAS=1 TF_CPP_MIN_LOG_LEVEL=3 "$PY" - "$VERSION" <<'EOF' >/dev/null 2>&1
import os
import sys
import horovod
import horovod.tensorflow as hvd  # loads the compiled ops: fails if built against another TF
assert horovod.__version__ == sys.argv[1], horovod.__version__
assert hvd.gloo_built()
assert os.environ.get("HOROVOD_GPU_OPERATIONS") != "NCCL" or hvd.nccl_built(), "no NCCL operations"
EOF
}

if probe; then
  echo "install_horovod: horovod $VERSION already importable with $PY; nothing to do"
  exit 0
fi
for tool in cmake g++; do
  command -v "$tool" >/dev/null || { echo "install_horovod: $tool is required to build horovod" >&2; exit 1; }
done
"$PY" -c "import tensorflow" 2>/dev/null || { echo "install_horovod: install TensorFlow first (scripts/setup.sh)" >&2; exit 1; }

# A built wheel is kept in a per-user cache keyed by everything the build depends on (Horovod, TensorFlow and
# Python versions, GPU operations): a fresh checkout or venv on the same machine installs it in seconds
# instead of compiling for minutes. A cached wheel that fails the probe is dropped and rebuilt.
tf_version="$(TF_CPP_MIN_LOG_LEVEL=3 "$PY" -c "import tensorflow as tf; print(tf.__version__)" 2>/dev/null)"
py_tag="$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
cache="${UNET_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/unet-medical/horovod-$VERSION-tf$tf_version-$py_tag-${HOROVOD_GPU_OPERATIONS:-cpu}}"
cached=$(ls "$cache"/horovod-*.whl 2>/dev/null | head -n 1 || true)
if [ -n "$cached" ]; then
  "$PY" -m pip install -q --no-deps --force-reinstall "$cached" && "$PY" -m pip install -q cloudpickle psutil pyyaml packaging
  if probe; then
    echo "install_horovod: horovod $VERSION installed from the cached build $cached"
    exit 0
  fi
  echo "install_horovod: the cached build $cached does not import; rebuilding" >&2
  rm -f "$cached"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
start=$SECONDS
"$PY" -m pip download -q "horovod==$VERSION" --no-deps --no-binary :all: -d "$work"
tar -xzf "$work/horovod-$VERSION.tar.gz" -C "$work"
src="$work/horovod-$VERSION"
tf_include="$(TF_CPP_MIN_LOG_LEVEL=3 "$PY" -c "import tensorflow as tf; print(tf.sysconfig.get_include())" 2>/dev/null)"

xla_ops="$src/horovod/tensorflow/xla_mpi_ops.cc"
old_builder="tensorflow/compiler/xla/client/xla_builder.h"
new_builder="xla/hlo/builder/xla_builder.h"
if [ ! -f "$tf_include/$old_builder" ] && [ -f "$tf_include/$new_builder" ]; then
  grep -q "#include \"$old_builder\"" "$xla_ops" || { echo "install_horovod: $xla_ops changed; patch not applicable" >&2; exit 1; }
  sed -i "s|#include \"$old_builder\"|#include \"$new_builder\"|" "$xla_ops"
fi
extra_include=""
for dir in "$tf_include/external/highwayhash" "$tf_include/external/farmhash_archive/src"; do
  [ -d "$dir" ] && extra_include="$extra_include:$dir"
done
export CPLUS_INCLUDE_PATH="${CPLUS_INCLUDE_PATH:-}$extra_include"
export CPLUS_INCLUDE_PATH="${CPLUS_INCLUDE_PATH#:}"

export HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1
export HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1
# horovod's setup.py runs `make -j8` unless MAKEFLAGS is set; one job per core is as fast and
# does not swamp a small shared machine.
export MAKEFLAGS="${MAKEFLAGS:--j$(nproc)}"
# --no-build-isolation: setup.py must import the TensorFlow it compiles against (the installed one).
# horovod's runtime dependencies (cloudpickle, psutil, pyyaml, packaging) come from the registry.
"$PY" -m pip wheel -q --no-build-isolation --no-cache-dir --no-deps -w "$work/wheel" "$src"
"$PY" -m pip install -q "$work"/wheel/horovod-*.whl
probe || { echo "install_horovod: built, but 'import horovod.tensorflow' still fails" >&2; exit 1; }
mkdir -p "$cache" && cp "$work"/wheel/horovod-*.whl "$cache/"
echo "install_horovod: horovod $VERSION built and installed in $((SECONDS - start)) s"
