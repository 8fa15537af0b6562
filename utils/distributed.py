"""One small interface over the ways to run the training loop: one process, tf.distribute, Horovod.

The training loop talks only to this interface (rank, size, is_chief, reduce_gradients,
broadcast_variables), never to Horovod or tf.distribute directly, so every backend runs the same loop.
"""
from __future__ import annotations

from typing import Any, Sequence


class SingleProcess:
    """One process, one device: reductions are identities."""

    name = "single"
    rank = 0
    size = 1

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    def reduce_gradients(self, grads: Sequence[Any]) -> list[Any]:
        return list(grads)

    def broadcast_variables(self, variables: Sequence[Any]) -> None:
        """Make every worker start from the chief's values (nothing to do with one process)."""


def create(backend: str = "single") -> SingleProcess:
    if backend == "single":
        return SingleProcess()
    raise ValueError(f"unknown distribution backend {backend!r}")
