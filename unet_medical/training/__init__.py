"""Training stage: the one training loop (loop), its loss (losses), atomic checkpoints (checkpoint) and
the scale-out backends behind one interface (distributed)."""
