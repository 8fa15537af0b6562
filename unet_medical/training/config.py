"""The training stage's settings: steps, optimizer, loss, schedule, precision, checkpoints and scale-out.
Standard library only (no TensorFlow): the command line builds its flags from it."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from unet_medical.base.cpu import PRECISIONS
from unet_medical.training.loss_registry import DEFAULT_LOSS, LOSSES
from unet_medical.base.settings import Settings, above, at_least, require, setting


def deep_supervision_obstacle(padding: str, depth: int | None, quantized: bool) -> str | None:
    """Why a U-Net cannot be deep-supervised (training.deep_supervision), or None: the one rule the flag check,
    the recipe and the heads' builder share. `depth` None (not chosen yet) is not judged."""
    if padding != "same":
        return ("valid padding (the paper's network): a decoder level is not a subsampling of the output grid; "
                "it needs --padding same")
    if depth is not None and depth < 3:
        return f"depth {depth}: only the output would be supervised; it needs --depth 3 or more"
    if quantized:
        return "a quantized or compressed network (its layers are renamed): it needs a float network"
    return None


NVIDIA_BATCH = 1  # NVIDIA's --batch_size default: the modes that do not train use it when no batch is given


def choose_batch_size(dims: int, padding: str) -> tuple[int, str]:
    """(images per step, why) for a training run whose --batch_size was left open."""
    if dims == 3:
        return 2, ("2 patches per step, nnU-Net's 3-D batch: on the synthetic mr_faint set at the recipe's 15 minutes "
                   "it trained 1.9x the steps of 4 patches and scored +0.6 and +0.4 test Dice points (two seeds, README)")
    if padding == "same":
        return 4, "4 crops per step: the CPU recipe's batch, with which its budgets and tables were measured"
    return NVIDIA_BATCH, "1 tile per step: NVIDIA's default for the paper's valid-padding network"


@dataclasses.dataclass(frozen=True)
class TrainingConfig(Settings):
    """How the network is trained (unet_medical.training)."""

    section: ClassVar[str] = "training"
    title: ClassVar[str] = "training"

    batch_size: int | None = setting(None, "images per step per worker: 2-D crops or tiles, or 3-D patches (default: "
                                     "chosen when a run trains: 2 patches for a 3-D U-Net, 4 crops for a same-padding "
                                     "2-D U-Net, 1 for the paper's valid-padding network; 1 in the other modes)",
                                     rule=at_least(1))
    learning_rate: float = setting(1e-4, "peak Adam learning rate", rule=above(0))
    weight_decay: float = setting(0.0, "decoupled weight decay (AdamW) per step, relative to the learning rate",
                                 rule=at_least(0, "a number"))
    max_steps: int = setting(1000, "training steps in total (a resumed run counts from its checkpoint)", rule=at_least(0))
    warmup_steps: int = setting(0, "linear learning-rate warm-up steps", rule=at_least(0))
    lr_schedule: str = setting("constant", "after warm-up: constant or cosine decay to 0 at max_steps",
                              choices=("constant", "cosine"))
    loss: str = setting(DEFAULT_LOSS, "training loss (ce_dice: pixel-wise cross-entropy + --dice_weight x "
                       "(1 - mean soft Dice); ce_dice_cldice: half of that Dice term is clDice, for thin branching "
                       "structures); plugins (--plugins) add more", choices=LOSSES.names)
    deep_supervision: bool | None = setting(None, "also score decoder levels 2 to depth - 1 through 1x1 heads that "
                                            "exist only in training (nnU-Net's deep supervision; loss weights "
                                            "1/2^(level-1), normalized; labels subsampled). Default: chosen, on for "
                                            "a same-padding float U-Net (2-D or 3-D) of depth 3 or more")
    dice_weight: float = setting(1.0, "weight of the soft Dice term next to cross-entropy", rule=at_least(0, "a number"))
    time_budget: float | None = setting(None, "minutes of training, evaluations, checkpoints and the decision on "
                                        "validation included: the "
                                        "run measures its step time after warm-up and fixes --max_steps from it "
                                        "(0 or default: use --max_steps). A --max_steps typed on the command "
                                        "line (or in --config) wins: the budget is then ignored",
                                        rule=at_least(0, "minutes"))
    time_budget_ignored: float | None = setting(None, "the --time_budget that an explicit --max_steps overruled "
                                                "(parse_config sets it; the run logs it)", flag=False)
    seed: int = setting(0, "seed of weights, batches, crops and augmentation")
    resume_training: bool = setting(False, "continue from model_dir/checkpoints/last.npz")
    log_every: int = setting(10, "log loss and throughput every N steps", rule=at_least(1))
    evaluate_every: int | None = setting(None, "evaluate on the held-out fold every N steps, and at the end (one "
                                        "due within N/2 steps of the end is left to the final one); default: at the "
                                        "end only; with --time_budget 4 times in all", rule=at_least(0))
    checkpoint_every: int = setting(50, "write the resumable checkpoint every N steps", rule=at_least(1))
    deterministic: bool = setting(False, "deterministic TF ops: two runs give bit-identical weights")
    precision: str = setting("auto", "compute precision: auto = bfloat16 mixed precision on CPUs with "
                            "AVX512_BF16 or AMX, float16 with loss scaling on GPUs with tensor cores, float32 "
                            "elsewhere (the choice and its reason are logged); fp32, bf16, fp16 force one",
                            choices=PRECISIONS)
    amp: bool = setting(False, "mixed precision whatever the hardware: --precision auto but never float32 "
                       "(bfloat16 on CPU, float16 with loss scaling on GPU; NVIDIA's spelling: --use_amp)")
    xla: bool = setting(False, "compile the training step with XLA (jit_compile; NVIDIA's spelling: --use_xla)")
    init_from: str | None = setting(None, "start from the model and weights of this training run's folder "
                                   "(fine-tuning, compression, quantization of a trained model)")
    num_epochs: int | None = setting(None, "train for this many passes over the training slices instead of "
                                    "--max_steps (the paper's YAML key)", rule=at_least(1))
    distribution: str = setting("single", "single process, tf.distribute (mirrored: one node; "
                               "multi_worker: TF_CONFIG) or horovod (horovodrun)",
                               choices=("single", "mirrored", "multi_worker", "horovod"))
    lr_scaling: str = setting("none", "scale --learning_rate with the number of workers: none, linear "
                             "(Goyal et al. 2017) or sqrt", choices=("none", "linear", "sqrt"))

    def check(self) -> None:
        require(not (self.amp and self.precision == "fp32"), "precision", self.precision,
                "auto, bf16 or fp16 with --amp (mixed precision); or drop --amp")
