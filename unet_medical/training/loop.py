"""The one training loop (every exec mode and every model variant goes through it).

Custom `tf.function` step with GradientTape, so Horovod's and tf.distribute's gradient reductions fit
the same loop (utils.training.distributed). Checkpoints are single atomic files (utils.training.checkpoint); the input
stream is a pure function of (seed, step) (utils.data.pipeline), so `--resume_training` after a crash or
SIGKILL continues to the same weights as a run that was never interrupted.
"""
from __future__ import annotations

import dataclasses
import math
import pathlib
import time
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from unet_medical.training import checkpoint as ckpt
from unet_medical.base.errors import UNetError
from unet_medical.training.loss_registry import DEFAULT_LOSS, LOSSES
from unet_medical.data.pipeline import AugmentFn, CropGeometry, Sampling, make_train_dataset
from unet_medical.base.progress import Progress


class TrainSettings(Protocol):
    """The settings the loop reads (runtime.config.Config provides them; the loop never imports it)."""

    model_dir: str
    resume_training: bool
    fold: int
    max_steps: int
    batch_size: int
    seed: int
    dice_weight: float
    loss: str
    xla: bool
    log_every: int
    evaluate_every: int | None
    checkpoint_every: int
    learning_rate: float
    lr_scaling: str
    warmup_steps: int
    lr_schedule: str
    weight_decay: float


class TrainingDiverged(UNetError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


@keras.saving.register_keras_serializable(package="unet")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `peak` over `warmup_steps`, then constant or cosine decay to 0."""

    def __init__(self, peak: float, warmup_steps: int, total_steps: int, decay: str = "constant"):
        self.peak = float(peak)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.decay = decay

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * tf.minimum(1.0, (step + 1.0) / float(max(1, self.warmup_steps)))
        if self.decay == "cosine":
            span = float(max(1, self.total_steps - self.warmup_steps))
            progress = tf.clip_by_value((step - self.warmup_steps) / span, 0.0, 1.0)
            return tf.where(step < self.warmup_steps, warm, self.peak * 0.5 * (1.0 + tf.cos(math.pi * progress)))
        return warm

    def get_config(self) -> dict[str, Any]:
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps,
                "decay": self.decay}


def scaled_learning_rate(base: float, world_size: int, rule: str) -> float:
    """--lr_scaling: W workers average gradients over a W times larger global batch; `linear`
    (Goyal et al. 2017) multiplies the rate by W, `sqrt` by sqrt(W), `none` keeps it."""
    factor = {"none": 1.0, "linear": float(world_size), "sqrt": math.sqrt(world_size)}[rule]
    return base * factor


def make_optimizer(cfg: TrainSettings, world_size: int = 1) -> keras.optimizers.Optimizer:
    """Adam (AdamW when --weight_decay > 0) on the warm-up schedule."""
    peak = scaled_learning_rate(cfg.learning_rate, world_size, cfg.lr_scaling)
    schedule = WarmupSchedule(peak, cfg.warmup_steps, cfg.max_steps, cfg.lr_schedule)
    if cfg.weight_decay > 0:
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay)
    else:
        optimizer = keras.optimizers.Adam(schedule)
    if keras.mixed_precision.global_policy().compute_dtype == "float16":
        optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)  # dynamic loss scaling
    return optimizer


@dataclasses.dataclass
class TrainState:
    step: int
    best_score: float | None
    last_eval: dict[str, Any] | None


def make_train_step(model: keras.Model, optimizer: keras.optimizers.Optimizer, n_classes: int,
                    dice_weight: float, dist: Any, xla: bool = False,
                    class_weights: Sequence[float] | None = None, loss: str = DEFAULT_LOSS) -> Callable:
    """One compiled optimization step: forward, the --loss (default CE + soft Dice), reduced gradients, update.

    `class_weights` (one per class) weigh each pixel's cross-entropy by its true class.

    Under a float16 policy the optimizer is a LossScaleOptimizer: the loss is scaled before the
    gradient and the gradients unscaled after, so small float16 gradients do not flush to zero.
    """
    scaled = isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer)

    weight_table = None if class_weights is None else tf.constant(class_weights, tf.float32)
    loss_fn = LOSSES.get(loss)  # looked up once, outside the traced step

    def train_step(images: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            weights = None if weight_table is None else tf.gather(weight_table, labels)
            value = loss_fn(logits, labels, n_classes, dice_weight=dice_weight, weights=weights)
            if model.losses:
                value += tf.add_n([tf.cast(x, tf.float32) for x in model.losses])
            target = optimizer.get_scaled_loss(value) if scaled else value
        grads = tape.gradient(target, model.trainable_variables)
        if scaled:
            grads = optimizer.get_unscaled_gradients(grads)
        grads = dist.reduce_gradients(grads)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return value

    return dist.compile_step(train_step, xla=xla)


def train(cfg: TrainSettings, model: keras.Model, *, train_images: list[np.ndarray], train_masks: list[np.ndarray],
          train_names: list[str], geometry: CropGeometry, n_classes: int, logger: Any, dist: Any,
          evaluate: Callable[[keras.Model, int], dict[str, Any]] | None,
          augment: AugmentFn | None, score_key: str = "mean_dice", sampling: Sampling = Sampling(),
          class_weights: Sequence[float] | None = None,
          on_start: Callable[[int], None] | None = None) -> TrainState:
    """Train `model` to cfg.max_steps, evaluating every cfg.evaluate_every steps and at the end.

    `evaluate(model, step)` returns metrics (it also writes eval_results.json); the checkpoint with
    the highest `score_key` is kept as best.npz, the newest as last.npz. `on_start(step)` runs once the
    checkpoint of a resume has loaded (step 0 for a new run), before any training: the caller writes
    the run's records there, so a refused or failed resume leaves them as they were.
    """
    directory = ckpt.checkpoint_dir(cfg.model_dir)
    last_path, best_path = directory / ckpt.LAST, directory / ckpt.BEST
    with dist.scope():
        optimizer = make_optimizer(cfg, dist.size)
        optimizer.build(model.trainable_variables)
    state = TrainState(step=0, best_score=None, last_eval=None)
    if last_path.exists():
        if not cfg.resume_training:
            info = ckpt.read_header(last_path)
            raise UNetError(
                f"{last_path} already holds a checkpoint at step {info.step}: pass --resume_training to "
                "continue it, or choose a new --model_dir (nothing in model_dir is ever overwritten "
                "from scratch)")
        info = ckpt.load_checkpoint(last_path, model, optimizer)
        state.step, state.best_score = info.step, info.meta.get("best_score")
        logger.log("PARAMETER", {"resumed_from": str(last_path), "resumed_step": info.step})
        if "loss_scale" in info.missing:
            logger.log("PARAMETER", {"message": f"{last_path} predates saved loss-scale state: the dynamic "
                                                "loss scale restarts at its initial value"})
    dist.broadcast_variables(list(model.variables) + ckpt.optimizer_state(optimizer))
    if on_start is not None:
        on_start(state.step)

    def save(path: pathlib.Path, with_optimizer: bool) -> None:
        if dist.is_chief:
            ckpt.save_checkpoint(path, model, optimizer if with_optimizer else None, step=state.step,
                                 meta={"best_score": state.best_score, "fold": cfg.fold})

    def run_evaluation() -> None:
        if evaluate is None or not dist.is_chief:
            return
        results = evaluate(model, state.step)
        state.last_eval = results
        score = results.get(score_key)
        if score is not None and (state.best_score is None or score > state.best_score):
            state.best_score = float(score)
            save(best_path, with_optimizer=False)

    if state.step >= cfg.max_steps:
        logger.log("PARAMETER", {"message": f"already at step {state.step} >= max_steps: nothing to train"})
        if not last_path.exists():  # --max_steps 0: evaluate and save the model as it is
            run_evaluation()
            save(best_path, with_optimizer=False)
            save(last_path, with_optimizer=True)
            return state
        # A run stopped after its last checkpoint (during the final evaluation, or before best.npz was
        # written) finishes here: the evaluation runs again and best.npz is written if it is missing.
        run_evaluation()
        if not best_path.exists():
            save(best_path, with_optimizer=False)
        return state

    dataset = make_train_dataset(train_images, train_masks, train_names, geometry,
                                 batch_size=cfg.batch_size, seed=cfg.seed, start_step=state.step,
                                 max_steps=cfg.max_steps, augment=augment, rank=dist.rank,
                                 world_size=dist.size, sampling=sampling)
    train_step = make_train_step(model, optimizer, n_classes, cfg.dice_weight, dist, xla=cfg.xla,
                                 class_weights=class_weights, loss=cfg.loss)
    window_start, window_images, losses = time.perf_counter(), 0, []
    # k/N, rate and ETA on the chief: a bar on a terminal, and in the --log_every record below.
    with Progress(cfg.max_steps, "train", logger, unit="step", initial=state.step, interval_s=None,
                  integer_steps=True, enabled=dist.is_chief) as progress:
        for images, labels in dataset:
            loss = float(train_step(images, labels))
            state.step += 1
            if not math.isfinite(loss):
                raise TrainingDiverged(
                    f"loss is {loss} at step {state.step}; stopped. The last good checkpoint "
                    f"({last_path if last_path.exists() else 'none yet'}) is kept; lower --learning_rate "
                    "or check the data")
            losses.append(loss)
            window_images += int(images.shape[0]) * dist.size
            progress.update()
            if state.step % cfg.log_every == 0 or state.step == cfg.max_steps:
                elapsed = time.perf_counter() - window_start
                # The schedule's current value; a distributed variable under tf.distribute, hence the tensor.
                lr = float(tf.convert_to_tensor(optimizer.learning_rate))
                progress.log(loss=float(np.mean(losses)), img_per_s=window_images / elapsed, learning_rate=lr)
                window_start, window_images, losses = time.perf_counter(), 0, []
            if cfg.evaluate_every and state.step % cfg.evaluate_every == 0 and state.step < cfg.max_steps:
                run_evaluation()
            if state.step % cfg.checkpoint_every == 0 or state.step == cfg.max_steps:
                save(last_path, with_optimizer=True)
    run_evaluation()
    if state.best_score is None:  # no evaluation ran: the final weights are the best we know
        save(best_path, with_optimizer=False)
    save(last_path, with_optimizer=True)
    return state
