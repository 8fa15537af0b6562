"""U-Net Medical: data, training, inference, evaluation and export for biomedical segmentation.

Layers, bottom to top (imports point down only; tests/test_layout.py enforces it):
    base/       errors, files, run records, CPU and precision, timing, progress, registries, structured log
    model/      the U-Net, its blocks and transforms (quantization, Tucker compression, packing)
    data/ -> training/ -> inference/ -> evaluation/ -> export/     the stages, each with its config
    cli/        the command line (`unet-medical`, main.py): flags, exec modes, the run report

Importing this package sets the environment TensorFlow reads at import time, so every entry point
(main.py, the console script, tests, benchmarks) gets Keras 2 (tf_keras), which TF-MOT requires.
"""
import os

__version__ = "0.4.0"

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TF's C++ INFO/WARNING lines (CPU feature notes, oneDNN) drown the structured log; the command line
# goes further (unet_medical.base.tf_env) and --verbose brings them back.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
