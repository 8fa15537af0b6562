"""Per-layer weight histograms of a trained model as PNG (the paper's `operation_mode: visualize`).

For a quantized layer the histogram shows the kernel as the forward pass uses it (after the weight
quantizer), so a person can see the quantization levels, saturation and dead weights.
"""
from __future__ import annotations

import math
import pathlib
from typing import Any

import numpy as np

from unet_medical.base.fileio import atomic_write


def conv_kernels(model: Any) -> list[tuple[str, np.ndarray]]:
    """(layer name, kernel values as used in the forward pass) for every layer with a kernel."""
    out = []
    for layer in model.layers:
        target = getattr(layer, "layer", layer)  # TF-MOT wraps layers
        if not hasattr(target, "kernel"):
            continue
        kernel = target.quantized_kernel() if hasattr(target, "quantized_kernel") else target.kernel
        out.append((layer.name, np.asarray(kernel).ravel()))
    return out


def write_weight_histograms(model: Any, out_dir: str | pathlib.Path, bins: int = 64) -> list[pathlib.Path]:
    """One PNG grid of all layers' histograms plus one PNG per layer; returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kernels = conv_kernels(model)
    cols = 4
    rows = max(1, math.ceil(len(kernels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
    written = []
    for ax, (name, values) in zip(axes.ravel(), kernels):
        distinct = np.unique(values)
        ax.hist(values, bins=min(bins, max(len(distinct), 1) * 2 if len(distinct) < bins else bins), color="tab:blue")
        ax.set_title(f"{name}: {len(distinct)} distinct values", fontsize=8)
        ax.tick_params(labelsize=7)
        single, single_ax = plt.subplots(figsize=(5, 3.2))
        single_ax.hist(values, bins=bins, color="tab:blue")
        single_ax.set_title(f"{name} ({values.size} weights, {len(distinct)} distinct)")
        single.tight_layout()
        path = out_dir / f"weights_{name}.png"
        atomic_write(path, lambda tmp, figure=single: figure.savefig(tmp, format="png", dpi=90))
        plt.close(single)
        written.append(path)
    for ax in axes.ravel()[len(kernels):]:
        ax.axis("off")
    fig.tight_layout()
    grid = out_dir / "weights_all_layers.png"
    atomic_write(grid, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)
    return [grid, *written]
