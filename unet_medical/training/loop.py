"""The one training loop (every exec mode and every model variant goes through it).

Custom `tf.function` step with GradientTape, so Horovod's and tf.distribute's gradient reductions fit
the same loop (utils.training.distributed). Checkpoints are single atomic files (utils.training.checkpoint); the input
stream is a pure function of (seed, step) (utils.data.pipeline), so `--resume_training` after a crash or
SIGKILL continues to the same weights as a run that was never interrupted. `build_trainer` is the one
place the optimizer, the compiled step and the batch stream are assembled (the benchmark times it too);
with --time_budget the loop fixes its number of steps from its own steady step time (utils.training.budget).
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

from unet_medical.training import budget
from unet_medical.training import checkpoint as ckpt
from unet_medical.training.deep_supervision import SupervisedNetwork, supervise
from unet_medical.base.errors import UNetError
from unet_medical.training.loss_registry import DEFAULT_LOSS, LOSSES
from unet_medical.data.patches3d import PatchSize, VolumeAugment, make_patch_dataset
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
    time_budget: float | None  # minutes; None: train to max_steps (utils.training.budget)
    deep_supervision: bool | None  # None (the recipe left it unset, e.g. a benchmark): off


class TrainingDiverged(UNetError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


@keras.saving.register_keras_serializable(package="unet")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `peak` over `warmup_steps`, then constant or cosine decay from `decay_start`
    (default: the end of warm-up) to 0 at `total_steps`.

    The total and the decay start are variables, not Python numbers: a --time_budget run fixes its total
    after it has started (utils.training.budget), and the optimizer's traced update must read the new
    values without being traced again. Until then it holds the peak (`hold`)."""

    HOLD = 2.0 ** 30  # a decay start no run reaches: the rate stays at its peak after warm-up

    def __init__(self, peak: float, warmup_steps: int, total_steps: int, decay: str = "constant",
                 decay_start: int | None = None):
        self.peak = float(peak)
        self.warmup_steps = int(warmup_steps)
        self.decay = decay
        self.total_steps = tf.Variable(float(total_steps), trainable=False, dtype=tf.float32, name="lr_total_steps")
        start = self.warmup_steps if decay_start is None else decay_start
        self.decay_start = tf.Variable(float(start), trainable=False, dtype=tf.float32, name="lr_decay_start")

    def set_total(self, total_steps: int, decay_start: float) -> None:
        """Decay from `decay_start` to 0 at `total_steps` (a float decay start: HOLD keeps the peak)."""
        self.total_steps.assign(float(total_steps))
        self.decay_start.assign(float(decay_start))

    def hold(self) -> None:
        """No decay until set_total: the total of a --time_budget run is not known yet."""
        self.set_total(self.HOLD + 1, self.HOLD)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * tf.minimum(1.0, (step + 1.0) / float(max(1, self.warmup_steps)))
        if self.decay == "cosine":
            span = tf.maximum(1.0, self.total_steps - self.decay_start)
            progress = tf.clip_by_value((step - self.decay_start) / span, 0.0, 1.0)
            return tf.where(step < self.warmup_steps, warm, self.peak * 0.5 * (1.0 + tf.cos(math.pi * progress)))
        return warm

    def get_config(self) -> dict[str, Any]:
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "total_steps": int(self.total_steps.numpy()),
                "decay": self.decay, "decay_start": int(self.decay_start.numpy())}


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
                    class_weights: Sequence[float] | None = None, loss: str = DEFAULT_LOSS,
                    supervised: SupervisedNetwork | None = None) -> Callable:
    """One compiled optimization step: forward, the --loss (default CE + soft Dice), reduced gradients, update.

    `class_weights` (one per class) weigh each pixel's cross-entropy by its true class. With `supervised`
    (--deep_supervision) the step trains `supervised.trained` (the model and its heads) on the loss of every
    supervised level.

    Under a float16 policy the optimizer is a LossScaleOptimizer: the loss is scaled before the
    gradient and the gradients unscaled after, so small float16 gradients do not flush to zero.
    """
    scaled = isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer)

    weight_table = None if class_weights is None else tf.constant(class_weights, tf.float32)
    loss_fn = LOSSES.get(loss)  # looked up once, outside the traced step

    network = model if supervised is None else supervised.trained

    def train_step(images: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            outputs = network(images, training=True)
            weights = None if weight_table is None else tf.gather(weight_table, labels)
            if supervised is None:
                value = loss_fn(outputs, labels, n_classes, dice_weight=dice_weight, weights=weights)
            else:
                value = supervised.loss(loss_fn, outputs, labels, n_classes, dice_weight, weights)
            if network.losses:
                value += tf.add_n([tf.cast(x, tf.float32) for x in network.losses])
            target = optimizer.get_scaled_loss(value) if scaled else value
        grads = tape.gradient(target, network.trainable_variables)
        if scaled:
            grads = optimizer.get_unscaled_gradients(grads)
        grads = dist.reduce_gradients(grads)
        optimizer.apply_gradients(zip(grads, network.trainable_variables))
        return value

    return dist.compile_step(train_step, xla=xla)


def schedule_of(optimizer: keras.optimizers.Optimizer) -> WarmupSchedule:
    """The learning-rate schedule make_optimizer gave `optimizer` (inside a LossScaleOptimizer too)."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return inner._learning_rate  # tf_keras keeps the schedule object here; `learning_rate` is its value


@dataclasses.dataclass(frozen=True)
class TrainData:
    """What the batch stream is made of, as the run prepared it.

    `images` are normalized float32 (H, W, C) with the run's --normalization, `masks` int class ids
    (H, W), `names` name them in error messages; crops of `geometry`, centred on rare classes as
    `sampling` says, augmented by `augment`; `class_weights` (one per class) weigh the cross-entropy.
    With `patch_size` (--dims 3) the images are volumes (I, J, K, C) and masks (I, J, K), cut into
    patches of that size (data.patches3d: `sampling` is the foreground fraction and classes, the
    augmentation is `volume_augment`; `geometry` and `augment` are not used)."""

    images: Sequence[np.ndarray]
    masks: Sequence[np.ndarray]
    names: Sequence[str]
    geometry: CropGeometry
    n_classes: int
    augment: AugmentFn | None = None
    sampling: Sampling = Sampling()
    class_weights: Sequence[float] | None = None
    patch_size: PatchSize | None = None
    volume_augment: VolumeAugment | None = None


@dataclasses.dataclass
class Trainer:
    """The one trainer: optimizer, compiled step and batch stream of a run. The training loop, and the
    benchmark (utils.cli.benchmark) time exactly this, so what they measure is what the run does."""

    optimizer: keras.optimizers.Optimizer
    step: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]  # (images, labels) -> loss, one optimization step
    data: TrainData
    batch_size: int
    seed: int
    rank: int = 0
    world_size: int = 1
    supervised: SupervisedNetwork | None = None  # --deep_supervision's heads (trained, never shipped)

    @property
    def aux_variables(self) -> list[tf.Variable]:
        """The deep-supervision heads' weights (last.npz's "aux" group); [] without them."""
        return [] if self.supervised is None else self.supervised.aux_variables

    @property
    def schedule(self) -> WarmupSchedule:
        return schedule_of(self.optimizer)

    def batches(self, start_step: int, stop_step: int) -> tf.data.Dataset:
        """Batches for steps start_step..stop_step-1: (B, I, I, C) float32 images, (B, O, O) int32 labels
        ((B, P0, P1, P2, C) and (B, P0, P1, P2) patches for volumes); each a pure function of
        (seed, step), so a resumed run sees the batches it would have seen."""
        d = self.data
        if d.patch_size is not None:
            return make_patch_dataset(list(d.images), list(d.masks), list(d.names), d.patch_size,
                                      batch_size=self.batch_size, seed=self.seed, start_step=start_step,
                                      max_steps=stop_step, classes=d.sampling.classes,
                                      foreground=d.sampling.foreground, augment=d.volume_augment, rank=self.rank,
                                      world_size=self.world_size)
        return make_train_dataset(list(d.images), list(d.masks), list(d.names), d.geometry,
                                  batch_size=self.batch_size, seed=self.seed, start_step=start_step,
                                  max_steps=stop_step, augment=d.augment, rank=self.rank,
                                  world_size=self.world_size, sampling=d.sampling)


def build_trainer(cfg: TrainSettings, model: keras.Model, data: TrainData, dist: Any) -> Trainer:
    """Optimizer (built, on the schedule of cfg), compiled train step (class weights, loss scaling, --xla)
    and batch stream of `model` trained on `data` by the workers of `dist`."""
    with dist.scope():
        supervised = supervise(model, data.n_classes) if cfg.deep_supervision else None
        optimizer = make_optimizer(cfg, dist.size)
        optimizer.build((supervised.trained if supervised else model).trainable_variables)
    step = make_train_step(model, optimizer, data.n_classes, cfg.dice_weight, dist, xla=cfg.xla,
                           class_weights=data.class_weights, loss=cfg.loss, supervised=supervised)
    return Trainer(optimizer, step, data, cfg.batch_size, cfg.seed, rank=dist.rank, world_size=dist.size,
                   supervised=supervised)


def timed(call: Callable[[], Any]) -> float:
    """Wall seconds of call()."""
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def train(cfg: TrainSettings, model: keras.Model, data: TrainData, *, logger: Any, dist: Any,
          evaluate: Callable[[keras.Model, int], dict[str, Any]] | None, score_key: str = "mean_dice",
          on_total_fixed: Callable[[int, int | None], None] | None = None,
          on_start: Callable[[int], None] | None = None,
          after_training_s: Callable[[], float] | None = None) -> TrainState:
    """Train `model` to cfg.max_steps (or for cfg.time_budget minutes), evaluating every cfg.evaluate_every
    steps and at the end.

    `evaluate(model, step)` returns metrics (it also writes eval_results.json); the checkpoint with
    the highest `score_key` is kept as best.npz, the newest as last.npz. With cfg.time_budget the total
    is fixed once the step time is measured (utils.training.budget); `on_total_fixed(total, evaluate_every)`
    is then called before the checkpoint that records it, so the run's files can say it too.
    `on_start(step)` runs once the checkpoint of a resume has loaded (step 0 for a new run), before any
    training: the caller writes the run's records there, so a refused or failed resume leaves them as they were.
    `after_training_s()`: the seconds the caller will spend once train() returns (its decision on validation),
    which a budget also covers; asked after the evaluation that fixes the total and after every later one.
    """
    started = time.perf_counter()  # the budget counts from here: steps, evaluations, checkpoints
    budget_s = cfg.time_budget * 60.0 if cfg.time_budget else None
    if budget_s is not None and dist.size > 1:
        raise UNetError("--time_budget: one process measures the step time; with several workers give --max_steps")
    directory = ckpt.checkpoint_dir(cfg.model_dir)
    last_path, best_path = directory / ckpt.LAST, directory / ckpt.BEST
    trainer = build_trainer(cfg, model, data, dist)
    optimizer = trainer.optimizer
    state = TrainState(step=0, best_score=None, last_eval=None)
    total: int | None = None if budget_s is not None else cfg.max_steps  # None: not measured yet
    decay_start = float(cfg.warmup_steps)  # the cosine decay starts at the end of warm-up
    if last_path.exists():
        if not cfg.resume_training:
            info = ckpt.read_header(last_path)
            raise UNetError(
                f"{last_path} already holds a checkpoint at step {info.step}: pass --resume_training to "
                "continue it, or choose a new --model_dir (nothing in model_dir is ever overwritten "
                "from scratch)")
        info = ckpt.load_checkpoint(last_path, model, optimizer, aux=trainer.aux_variables)
        state.step, state.best_score = info.step, info.meta.get("best_score")
        # A budgeted run's fixed decay start (a resume never measures again; utils.cli.modes hands the
        # loop the recorded total); older checkpoints decay from the end of warm-up.
        if total is not None and info.meta.get("decay_start") is not None:
            decay_start = float(info.meta["decay_start"])
        logger.log("PARAMETER", {"resumed_from": str(last_path), "resumed_step": info.step})
        if "loss_scale" in info.missing:
            logger.log("PARAMETER", {"message": f"{last_path} predates saved loss-scale state: the dynamic "
                                                "loss scale restarts at its initial value"})
    if total is None:
        trainer.schedule.hold()
    else:
        trainer.schedule.set_total(total, decay_start)
    dist.broadcast_variables(list(model.variables) + trainer.aux_variables + ckpt.optimizer_state(optimizer))
    if on_start is not None:
        on_start(state.step)
    evaluate_every = cfg.evaluate_every if total is not None else None  # a budget's: once its total is fixed
    evaluated_at: list[int] = []  # the step of the last evaluation

    def save(path: pathlib.Path, with_optimizer: bool) -> None:
        if dist.is_chief:
            ckpt.save_checkpoint(path, model, optimizer if with_optimizer else None, step=state.step,
                                 aux=trainer.aux_variables if with_optimizer else (),
                                 meta={"best_score": state.best_score, "fold": cfg.fold, "total_steps": total,
                                       "decay_start": decay_start if total is not None else None})

    def run_evaluation() -> None:
        if evaluate is None or not dist.is_chief or evaluated_at == [state.step]:
            return  # (a budget fixed at its very last step has just evaluated it)
        evaluated_at[:] = [state.step]
        results = evaluate(model, state.step)
        state.last_eval = results
        score = results.get(score_key)
        if score is not None and (state.best_score is None or score > state.best_score):
            state.best_score = float(score)
            save(best_path, with_optimizer=False)

    def fix_total() -> None:
        """End of a budget's warm-up: time an evaluation and a checkpoint, fix the total, set the schedule."""
        nonlocal total, decay_start, evaluate_every, fixed_costs
        evaluation_s = timed(run_evaluation) if evaluate is not None else 0.0
        checkpoint_s = timed(lambda: save(last_path, with_optimizer=True))
        costs = budget.BudgetCosts(meter.seconds_per_step(), evaluation_s, checkpoint_s, cfg.checkpoint_every,
                                   cfg.evaluate_every, after_s=after_training_s() if after_training_s else 0.0)
        spent = time.perf_counter() - started
        # One more checkpoint right now records the total: its time comes off the remainder.
        total = budget.steps_within_budget(costs, state.step, budget_s - spent - checkpoint_s)
        decay_start = float(max(cfg.warmup_steps, state.step))
        trainer.schedule.set_total(total, decay_start)
        evaluate_every = budget.budget_evaluate_every(total, cfg.evaluate_every) if evaluate is not None else None
        logger.log("RECIPE", budget.describe_fix(costs, meter, state.step, total, budget_s, spent,
                                                 cfg.time_budget))
        fixed_costs = dataclasses.replace(costs, evaluate_every=evaluate_every)
        record_total()

    def record_total() -> None:
        if on_total_fixed is not None and dist.is_chief:
            on_total_fixed(total, evaluate_every)
        save(last_path, with_optimizer=True)
        progress.set_total(total)

    def recheck_total() -> bool:
        """At RECHECK_FRACTIONS of the budget: refix the total from the steps since the last check if the
        run would miss its budget; the schedule's decay start stays. True when it changed."""
        nonlocal total
        assert fixed_costs is not None and total is not None and budget_s is not None
        costs = budget.current_costs(fixed_costs, recent_s, latest_s)
        spent = time.perf_counter() - started
        refit = budget.recheck_total(costs, state.step, total, budget_s - spent - costs.checkpoint_s, budget_s)
        if refit is None:
            return False
        logger.log("RECIPE", budget.describe_recheck(costs, fixed_costs.step_s, len(recent_s), state.step, total,
                                                     refit, spent, budget_s))
        total = refit
        trainer.schedule.set_total(total, decay_start)
        record_total()
        return True

    if total is not None and state.step >= total:
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

    # A budget's stream is bounded by its total once known (the loop stops there), not by the dataset.
    dataset = trainer.batches(state.step, total if total is not None else state.step + budget.UNBOUNDED_STEPS)
    meter = budget.StepMeter()
    fixed_costs: budget.BudgetCosts | None = None  # set when this process fixes a budget's total
    latest_s: dict[str, float] = {}  # seconds of the latest evaluation and checkpoint after the fix
    recent_s: list[float] = []  # step times since the last fix or check, for the next check
    rechecks = [f * budget_s for f in budget.RECHECK_FRACTIONS] if budget_s is not None else []
    window_start, window_images, losses = time.perf_counter(), 0, []
    # k/N, rate and ETA on the chief: a bar on a terminal, and in the --log_every record below.
    with Progress(total or state.step + 1, "train", logger, unit="step", initial=state.step, interval_s=None,
                  integer_steps=True, enabled=dist.is_chief) as progress:
        tick = time.perf_counter()
        for images, labels in dataset:
            loss = float(trainer.step(images, labels))
            state.step += 1
            step_s = time.perf_counter() - tick  # the batch's wait included: the pipeline is part of the step
            if not math.isfinite(loss):
                raise TrainingDiverged(
                    f"loss is {loss} at step {state.step}; stopped. The last good checkpoint "
                    f"({last_path if last_path.exists() else 'none yet'}) is kept; lower --learning_rate "
                    "or check the data")
            losses.append(loss)
            window_images += int(images.shape[0]) * dist.size
            progress.update()
            fixed_now = False
            if total is None:
                meter.add(tuple(images.shape), step_s)
                if budget.warmup_done(meter, time.perf_counter() - started, budget_s):
                    fix_total()
                    fixed_now = True
                else:  # the bar's N meanwhile: what the budget's remainder holds at the rate so far
                    left = budget_s - (time.perf_counter() - started)
                    progress.set_total(state.step + max(1, int(left / meter.seconds_per_step())))
            elif fixed_costs is not None:
                recent_s.append(step_s)
                spent = time.perf_counter() - started
                if rechecks and spent >= rechecks[0] and len(recent_s) >= budget.MIN_RECHECK_STEPS:
                    while rechecks and spent >= rechecks[0]:  # (slow steps may have passed several)
                        del rechecks[0]
                    fixed_now = recheck_total()
                    recent_s.clear()  # the next check measures the next interval's steps alone
            if state.step % cfg.log_every == 0 or state.step == total:
                elapsed = time.perf_counter() - window_start
                # The schedule's current value; a distributed variable under tf.distribute, hence the tensor.
                lr = float(tf.convert_to_tensor(optimizer.learning_rate))
                progress.log(loss=float(np.mean(losses)), img_per_s=window_images / elapsed, learning_rate=lr)
                window_start, window_images, losses = time.perf_counter(), 0, []
            if total is not None and not fixed_now:  # (fix_total has just evaluated and saved)
                if evaluate_every and budget.evaluation_due(state.step, total, evaluate_every):
                    latest_s["evaluation"] = timed(run_evaluation)
                    if after_training_s is not None:
                        latest_s["after"] = after_training_s()
                if state.step % cfg.checkpoint_every == 0 or state.step == total:
                    latest_s["checkpoint"] = timed(lambda: save(last_path, with_optimizer=True))
            elif total is None and state.step % cfg.checkpoint_every == 0:
                save(last_path, with_optimizer=True)  # no total yet: a resume goes on measuring
            if total is not None and state.step >= total:
                break
            tick = time.perf_counter()
    run_evaluation()
    if state.best_score is None:  # no evaluation ran: the final weights are the best we know
        save(best_path, with_optimizer=False)
    save(last_path, with_optimizer=True)
    if budget_s is not None:
        logger.log("RECIPE", {"time_budget_s": budget_s, "training_s": round(time.perf_counter() - started, 2),
                              "steps": state.step})
    return state
