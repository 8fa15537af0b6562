# U-Net for biomedical segmentation (TensorFlow 2 / Keras 2), GPU image with Horovod.
#
#   docker build -t unet_tf .                                   # builds Horovod too (a few minutes)
#   docker build -t unet_tf --build-arg WITH_HOROVOD=0 .        # without Horovod: multi-GPU recipes use MirroredStrategy
#   docker run --gpus all -it --rm --ipc=host -v /path/to/isbi2012:/data -v "$PWD/results":/results unet_tf
#
# Inside the container (see README; examples/ holds one-line recipes):
#   python download_dataset.py --data_dir /data
#   python main.py --exec_mode train_and_evaluate --data_dir /data --model_dir /results/fold0
#   python main.py --exec_mode predict --data_dir /data --model_dir /results/fold0
#   python main.py --exec_mode export --export_format onnx --data_dir /data --model_dir /results/fold0
#   bash examples/unet_FP32_1GPU.sh /data /results
#   bash examples/unet_TF-AMP_8GPU.sh /data /results            # Horovod, 8 processes (prints the backend)
#
# BASE_IMAGE defaults to the TensorFlow GPU image whose TensorFlow equals the tensorflow== pin of
# requirements.txt (tests/test_dockerfile.py checks it), so `pip install -r requirements.txt` keeps it
# and only adds the rest. The pip wheel has no TensorRT: for --export_format tftrt build FROM NVIDIA's NGC
# TensorFlow image, which has TF-TRT, a CUDA toolkit, NCCL and Horovod (then nothing is built), with its own
# TensorFlow kept:
#   docker build -t unet_tf_ngc --build-arg BASE_IMAGE=nvcr.io/nvidia/tensorflow:<yy.mm>-tf2-py3 \
#       --build-arg KEEP_TENSORFLOW=1 .
# (untested: NGC's TensorFlow is older than the pin), or export ONNX and use TensorRT on it.
#
# Horovod: scripts/docker_install.sh builds 0.28.1 against the image's TensorFlow, with NCCL GPU
# operations when the image has a CUDA toolkit (nvcc + cuda.h; NCCL from the TensorFlow wheel's
# nvidia-nccl-cu12 or the system), else with Gloo CPU operations (GPU tensors reduced via host memory).
# The same script runs outside Docker in tests/test_dockerfile.py (a fresh venv).
ARG BASE_IMAGE=tensorflow/tensorflow:2.21.0-gpu
FROM ${BASE_IMAGE}

ARG WITH_HOROVOD=1
ARG KEEP_TENSORFLOW=0
# PIP_NO_CACHE_DIR: no downloaded wheels in the image's layers (docker_install.sh leaves pip's cache to its
# environment, so outside Docker a fresh venv installs from the user's cache).
ENV TF_USE_LEGACY_KERAS=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /workspace/unet

# The install steps come before the sources: these layers are rebuilt only when requirements.txt or
# the two install scripts change.
COPY requirements.txt ./
COPY scripts/docker_install.sh scripts/install_horovod.sh scripts/
RUN bash scripts/docker_install.sh system
RUN bash scripts/docker_install.sh requirements
RUN bash scripts/docker_install.sh horovod

COPY . .

CMD ["bash"]
