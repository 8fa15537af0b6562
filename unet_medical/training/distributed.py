"""One small interface over the ways to run the training loop: one process, tf.distribute, Horovod.

The training loop talks only to this interface, never to Horovod or tf.distribute directly, so every
backend runs the same loop:
    rank, size, is_chief     who this process is (rank 0 alone logs, evaluates and checkpoints)
    scope()                  context in which the model and optimizer are created
    compile_step(fn, xla)    turn a per-replica step fn(images, labels) -> loss into a callable
                             returning the loss averaged over all workers (every worker sees the
                             same value, so a NaN stops all of them together)
    reduce_gradients(grads)  called by fn after the gradient: turns per-replica gradients into the
                             ones the optimizer must apply for an average over the global batch
    broadcast_variables(vs)  make every worker hold rank 0's values (called once, after the
                             optimizer is built and a checkpoint possibly restored)
    barrier()                return once every worker has reached it (end of a run: a worker that
                             exits while the chief still evaluates or saves looks crashed to
                             tf.distribute's coordination service)

Process-level batch: `rank` and `size` count processes, not devices. Every process takes its own
`--batch_size` images per step from the input stream (utils.data.pipeline shards by rank), so the global
batch is size x batch_size and `--lr_scaling` scales by `size`. With MirroredStrategy one process
drives every local device: its batch is split evenly over them (batch_size must be a multiple of
the number of local devices), so `mirrored` over 8 GPUs at --batch_size 64 trains like 8 Horovod
workers at --batch_size 8, except for the learning-rate scaling factor (1 vs 8): pass the learning
rate you want.

Data-parallel training averages per-worker gradients of per-worker losses. For the pixel-mean
cross-entropy that is the gradient of the global-batch loss; the batch-wide soft Dice term is
computed per worker (per replica), as in every data-parallel U-Net, so it is not.
"""
from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Callable, Iterator, Sequence

import tensorflow as tf

from unet_medical.base.errors import UNetError

BACKENDS = ("single", "mirrored", "multi_worker", "horovod")


class SingleProcess:
    """One process, one device: reductions are identities. The other backends extend it."""

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

    def barrier(self) -> None:
        """Nothing to wait for with one process."""


def tf_config_rank_and_size(tf_config: str | None) -> tuple[int, int]:
    """(rank, number of worker processes) from a TF_CONFIG JSON string.

    A "chief" task, if the cluster has one, is rank 0 and the "worker" tasks follow in index order;
    without a chief, worker i is rank i. Raises UNetError for a missing or malformed TF_CONFIG.
    """
    if not tf_config:
        raise UNetError("--distribution multi_worker needs TF_CONFIG in the environment: "
                        '{"cluster": {"worker": ["host1:port", "host2:port"]}, '
                        '"task": {"type": "worker", "index": 0}} (one entry per process)')
    try:
        parsed = json.loads(tf_config)
        cluster, task = parsed["cluster"], parsed["task"]
        chiefs, workers = list(cluster.get("chief", [])), list(cluster.get("worker", []))
        task_type, index = str(task["type"]), int(task["index"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UNetError(f"TF_CONFIG is not valid ({exc!r}): expected JSON with 'cluster' "
                        "(a 'worker' list, optionally one 'chief') and 'task' ('type', 'index')") from None
    if len(chiefs) > 1:
        raise UNetError(f"TF_CONFIG: a cluster has at most one chief, got {chiefs}")
    members = {"chief": len(chiefs), "worker": len(workers)}
    if task_type not in members or not 0 <= index < members[task_type]:
        raise UNetError(f"TF_CONFIG: task {task_type}:{index} is not in the cluster's chief/worker "
                        f"lists {cluster} (evaluator and ps tasks are not supported)")
    rank = index if task_type == "chief" else len(chiefs) + index
    return rank, len(chiefs) + len(workers)


def _sync_on_write(next_creator: Callable[..., tf.Variable], **kwargs: Any) -> tf.Variable:
    """Variable creator that turns ON_READ variables (BatchNorm's moving mean/variance) into ON_WRITE.

    Reading an ON_READ variable outside a replica context reduces it over all replicas; under
    MultiWorkerMirroredStrategy that is a collective every worker must join, so the chief alone
    saving a checkpoint or evaluating would hang. ON_WRITE with the same aggregation (MEAN) averages
    each update over all replicas inside the step, which every worker runs, and a read is local.
    """
    if kwargs.get("synchronization") == tf.VariableSynchronization.ON_READ:
        kwargs["synchronization"] = tf.VariableSynchronization.ON_WRITE
    return next_creator(**kwargs)


class TFDistributeBackend(SingleProcess):
    """tf.distribute: MirroredStrategy (one process, all local devices) or MultiWorkerMirroredStrategy.

    Keras optimizers all-reduce the gradients with a SUM over all replicas inside apply_gradients
    (tf_keras `Optimizer.aggregate_gradients`), so `reduce_gradients` divides each replica's
    gradient by the number of replicas: the applied update is then the average, like Horovod's.
    """

    def __init__(self, name: str, strategy: tf.distribute.Strategy, rank: int, size: int):
        self.name = name
        self.strategy = strategy
        self.rank = rank
        self.size = size
        self.replicas = int(strategy.num_replicas_in_sync)
        self.local_replicas = self.replicas // size

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        with self.strategy.scope(), tf.variable_creator_scope(_sync_on_write):
            yield

    def compile_step(self, step_fn: Callable[..., tf.Tensor], xla: bool = False) -> Callable[..., tf.Tensor]:
        strategy, local = self.strategy, self.local_replicas
        if xla and self.replicas > 1 and not tf.config.list_logical_devices("GPU"):
            # The optimizer's all-reduce would be compiled too, and XLA has no CPU collectives
            # ("Collectives are not yet implemented for CPU devices when compiling with XLA").
            raise UNetError(f"--xla with --distribution {self.name} needs GPUs: XLA cannot compile the "
                            f"gradient all-reduce of {self.replicas} CPU replicas; drop --xla")
        # XLA compiles the per-replica step (as Keras' model.fit does under a strategy); the outer
        # function only splits the batch, runs the replicas and reduces the loss.
        replica_step = tf.function(step_fn, jit_compile=True) if xla else step_fn

        def split(batch: tf.Tensor) -> Any:
            count = batch.shape[0]
            if count is None or count % local:
                raise UNetError(f"--batch_size={count} must be a multiple of the {local} local devices "
                                f"{self.name} runs on")
            part = count // local
            return strategy.experimental_distribute_values_from_function(
                lambda ctx: batch[(ctx.replica_id_in_sync_group % local) * part:
                                  (ctx.replica_id_in_sync_group % local + 1) * part])

        @tf.function
        def distributed_step(images: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
            losses = strategy.run(replica_step, args=(split(images), split(labels)))
            return strategy.reduce(tf.distribute.ReduceOp.MEAN, losses, axis=None)

        return distributed_step

    def reduce_gradients(self, grads: Sequence[Any]) -> list[Any]:
        scale = 1.0 / self.replicas
        return [None if g is None else g * tf.cast(scale, g.dtype) for g in grads]

    def broadcast_variables(self, variables: Sequence[Any]) -> None:
        """Copy replica 0's values to every replica of every worker (a SUM all-reduce in which only
        replica 0 contributes, so the sum is exact). Integer variables (the optimizer's step
        counter) travel as float64, exact below 2**53."""
        variables = list(variables)
        if self.replicas == 1 or not variables:
            return

        wire = [v.dtype if v.dtype.is_floating else tf.float64 for v in variables]
        groups = {dtype: [i for i, w in enumerate(wire) if w == dtype] for dtype in set(wire)}

        def contribution() -> list[tf.Tensor]:
            ctx = tf.distribute.get_replica_context()
            first = tf.equal(ctx.replica_id_in_sync_group, 0)
            values = [tf.cast(v.read_value(), w) for v, w in zip(variables, wire)]
            values = [tf.where(first, value, tf.zeros_like(value)) for value in values]
            out: list[Any] = [None] * len(values)
            for members in groups.values():  # one all-reduce per dtype: a batch must be homogeneous
                for i, value in zip(members, ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                                                            [values[i] for i in members])):
                    out[i] = value
            return out

        @tf.function
        def broadcast() -> None:
            reduced = self.strategy.run(contribution)
            first = [self.strategy.experimental_local_results(r)[0] for r in reduced]
            for v, value in zip(variables, first):
                v.assign(tf.cast(value, v.dtype))

        with self.strategy.scope():
            broadcast()

    def barrier(self) -> None:
        if self.size > 1:  # a cross-worker reduction every worker must join
            strategy = self.strategy
            count = tf.function(lambda: strategy.reduce(tf.distribute.ReduceOp.SUM,
                                                        strategy.run(lambda: tf.constant(1.0)), axis=None))
            count().numpy()


class HorovodBackend(SingleProcess):
    """Horovod (launched by horovodrun): one process per device, gradients averaged by allreduce."""

    name = "horovod"

    def __init__(self) -> None:
        try:
            import horovod.tensorflow as hvd
        except ImportError as exc:
            raise UNetError(f"--distribution horovod: horovod is not importable ({exc}); install it with "
                            "scripts/install_horovod.sh (it must be built against the installed TensorFlow)"
                            ) from None
        hvd.init()
        self.hvd = hvd
        self.rank, self.size = hvd.rank(), hvd.size()
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:  # one GPU per process, chosen by the process's rank on its node
            gpu = gpus[hvd.local_rank() % len(gpus)]
            tf.config.experimental.set_memory_growth(gpu, True)
            tf.config.set_visible_devices(gpu, "GPU")

    def compile_step(self, step_fn: Callable[..., tf.Tensor], xla: bool = False) -> Callable[..., tf.Tensor]:
        if xla and not (tf.config.list_physical_devices("GPU") and os.environ.get("HOROVOD_ENABLE_XLA_OPS") == "1"):
            # Inside jit_compile, HorovodAllreduce needs horovod's XLA kernels (xla_mpi_ops.cc): GPU
            # builds only, switched on by HOROVOD_ENABLE_XLA_OPS=1. On CPU, TF rejects the step.
            raise UNetError("--xla with --distribution horovod needs GPUs and HOROVOD_ENABLE_XLA_OPS=1 "
                            "(horovod has no XLA allreduce on CPU); drop --xla or use --distribution "
                            "multi_worker")
        hvd = self.hvd

        def averaged_loss_step(images: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
            return hvd.allreduce(step_fn(images, labels), op=hvd.Average, name="loss")

        return tf.function(averaged_loss_step, jit_compile=xla or None)

    def reduce_gradients(self, grads: Sequence[Any]) -> list[Any]:
        if self.size == 1:
            return list(grads)
        present = [g for g in grads if g is not None]
        reduced = iter(self.hvd.grouped_allreduce(present, op=self.hvd.Average))
        return [None if g is None else next(reduced) for g in grads]

    def broadcast_variables(self, variables: Sequence[Any]) -> None:
        if self.size > 1 and variables:
            self.hvd.broadcast_variables(list(variables), root_rank=0)

    def barrier(self) -> None:
        if self.size > 1:
            self.hvd.allreduce(tf.constant(0.0), op=self.hvd.Sum, name="barrier").numpy()


def _local_devices() -> list[str]:
    """The GPUs if there are any, else every logical CPU device (normally one)."""
    gpus = tf.config.list_logical_devices("GPU")
    return [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]


def create(backend: str = "single") -> SingleProcess | TFDistributeBackend | HorovodBackend:
    """The backend for --distribution; call once, before any other TensorFlow work (tf.distribute
    configures the runtime's collective ops, Horovod pins the GPU)."""
    if backend == "single":
        return SingleProcess()
    if backend == "mirrored":
        return TFDistributeBackend("mirrored", tf.distribute.MirroredStrategy(_local_devices()), rank=0, size=1)
    if backend == "multi_worker":
        rank, size = tf_config_rank_and_size(os.environ.get("TF_CONFIG"))
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        return TFDistributeBackend("multi_worker", strategy, rank=rank, size=size)
    if backend == "horovod":
        return HorovodBackend()
    raise UNetError(f"--distribution={backend!r}: expected one of {', '.join(BACKENDS)}")
