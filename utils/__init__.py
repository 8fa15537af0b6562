"""Data, training, inference, metrics and export for the U-Net pipeline.

Importing this package sets the environment TensorFlow reads at import time, so every entry point
(main.py, tests, benchmarks) gets Keras 2 (tf_keras), which TF-MOT requires.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TF's C++ INFO lines (cuInit on a CPU machine, CPU feature notes) drown the structured log.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
