# U-Net for biomedical segmentation (TensorFlow 2 / Keras 2), GPU image.
#
#   docker build -t unet_tf .
#   docker build -t unet_tf --build-arg WITH_HOROVOD=1 .        # also build Horovod (about 6 minutes)
#   docker run --gpus all -it --rm --ipc=host -v /path/to/isbi2012:/data -v "$PWD/results":/results unet_tf
#
# Inside the container (see README; examples/ holds one-line recipes):
#   python download_dataset.py --data_dir /data
#   python main.py --exec_mode train_and_evaluate --data_dir /data --model_dir /results/fold0
#   python main.py --exec_mode predict --data_dir /data --model_dir /results/fold0
#   python main.py --exec_mode export --export_format onnx --data_dir /data --model_dir /results/fold0
#   bash examples/unet_FP32_1GPU.sh /data /results
#
# The base image's TensorFlow must equal the tensorflow== pin of requirements.txt
# (tests/test_dockerfile.py checks it), so `pip install -r requirements.txt` keeps it and only adds
# the rest. The pip wheel has no TensorRT: for --export_format tftrt build FROM NVIDIA's NGC
# TensorFlow container instead (nvcr.io/nvidia/tensorflow), or export ONNX and use TensorRT on it.
FROM tensorflow/tensorflow:2.21.0-gpu

ARG WITH_HOROVOD=0
ENV TF_USE_LEGACY_KERAS=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /workspace/unet

# Requirements first: this layer is rebuilt only when requirements.txt changes.
COPY requirements.txt .
RUN python3 -m pip install --no-cache-dir -r requirements.txt

COPY . .

# Horovod has only a source distribution; the script builds it against the installed TensorFlow.
RUN if [ "$WITH_HOROVOD" = "1" ]; then \
        apt-get update && apt-get install -y --no-install-recommends cmake g++ && \
        rm -rf /var/lib/apt/lists/* && \
        PYTHON=python3 bash scripts/install_horovod.sh; \
    fi

CMD ["bash"]
