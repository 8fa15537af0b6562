"""Inference stage: the one overlap-tile inference path (tiling), runtimes for exported files
(runtimes) and prediction files (outputs)."""
