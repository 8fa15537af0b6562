"""One small interface over the ways to run the training loop: one process, tf.distribute, Horovod.

The training loop talks only to this interface, never to Horovod or tf.distribute directly, so every
backend runs the same loop:
    rank, size, is_chief     who this process is (rank 0 alone logs, evaluates and checkpoints)
    scope()                  context in which the model and optimizer are created
    compile_step(fn, xla)    turn a per-replica step fn(images, labels) -> loss into a callable
    reduce_gradients(grads)  average gradients over workers (inside the step)
    broadcast_variables(vs)  make every worker start from rank 0's values
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence

import tensorflow as tf


class SingleProcess:
    """One process, one device: reductions are identities."""

    name = "single"
    rank = 0
    size = 1

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    def scope(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def compile_step(self, step_fn: Callable[..., tf.Tensor], xla: bool = False) -> Callable[..., tf.Tensor]:
        return tf.function(step_fn, jit_compile=xla or None)

    def reduce_gradients(self, grads: Sequence[Any]) -> list[Any]:
        return list(grads)

    def broadcast_variables(self, variables: Sequence[Any]) -> None:
        """Nothing to do with one process."""


def create(backend: str = "single") -> SingleProcess:
    if backend == "single":
        return SingleProcess()
    raise ValueError(f"unknown distribution backend {backend!r}")
