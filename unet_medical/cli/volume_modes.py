"""Exec modes on medical volumes (MSD / nnU-Net raw folders, images/ + masks/ of .nii/.nii.gz), with the 2D
network (--dims 2, 2.5) or the 3D one (--dims 3): the pieces runtime modes.py calls when its data or its run
are volumes.

- training: the slices of data.volume_training train like any 2D images; the split is by case, the
  volume's fingerprint (spacing, anisotropy, modality) and the choices only volumes have go to the log
  as FINGERPRINT / RECIPE lines, and model.json records how volumes were cut and scaled.
- evaluation: each validation case's slices go through the one inference path (predict_images), are
  stacked back into a label map on the case's grid and scored per case in mm (evaluation.volumes); a 3D
  run predicts the whole case by Gaussian-weighted sliding windows of its training patch instead.
- prediction: every input volume (NIfTI file or folder, MSD imagesTs/, DICOM series) is cut and scaled
  as the run recorded, predicted, and written as CASE.nii.gz with exactly the input's geometry.
- resampling (--target_spacing, data.volume_resample): a run whose cases were resampled to a target
  spacing predicts on that grid, and its class probabilities go back onto each case's own grid (linear
  per class) before the argmax; scores are against the labels as read, at the case's own spacing.
"""
from __future__ import annotations

import os
import pathlib
import time
from typing import Any, Callable, Iterator

import numpy as np

from unet_medical.base import runlog
from unet_medical.base.artifacts import (EVAL_RESULTS, PREDICTIONS, RunRecord, load_run_record, write_eval_results,
                                         write_json)
from unet_medical.base.cpu import peak_memory_mb
from unet_medical.base.errors import UNetError
from unet_medical.cli.provenance import PROVENANCE, evaluation_results_name, provenance
from unet_medical.cli.assemble import restore_model
from unet_medical.cli.config import Config, batch_or_default
from unet_medical.cli.decide import FLIP_PASSES, PlainPass
from unet_medical.cli.lineage import read_run_config, refuse_trained_on, run_source
from unet_medical.data.folds import case_fold_split
from unet_medical.data.normalize import normalize_image
from unet_medical.data.volume_dims import DIMS
from unet_medical.data.volume_layouts import is_volume_layout
from unet_medical.data.volume_resample import Spacing, class_maps_on_grid, format_spacing, most_likely_class
from unet_medical.data.mirror_axes import AXES, format_mirror_axes, mirror_axes_in_effect
from unet_medical.data.volume_training import (VolumeSlices, case_inputs, cases_of, geometry_summary,
                                               load_volume_slices, prediction_cases, recorded_target,
                                               windows_from_record)
from unet_medical.data.volumes import Volume, write_nifti
from unet_medical.evaluation.volumes import score_volumes
from unet_medical.inference.decision import ARGMAX, AUTO, Decision, parse_threshold, resolve_decision
from unet_medical.inference.runtimes import as_predictor
from unet_medical.inference.sliding_window import mirror_flips, sliding_window_predict
from unet_medical.data.patches3d import parse_patch_size
from unet_medical.inference.tiling import predict_images
from unet_medical.model.unet import UNetSpec

SLIDING_OVERLAP = 0.5  # nnU-Net's: each voxel of a 3D case is predicted by up to 8 Gaussian-weighted windows


def is_volume_data(cfg: Config) -> bool:
    """True if --data_dir holds volumes (and no TIFF stack was named)."""
    return cfg.image_stack is None and os.path.isdir(cfg.data_dir) and is_volume_layout(cfg.data_dir, cfg.images_dir)


VOLUME_NORMALIZATION = "volumes are already scaled by their intensity window"


def prepare_training(cfg: Config, data: VolumeSlices, logger: runlog.Logger) -> Config:
    """Log the volume fingerprint and the volume-only recipe choices; the windows normalize, so the 2D
    normalization is fixed to global (per_image would rescale each slice and undo the CT window). A numeric
    --threshold is refused here, before training: volumes keep the argmax (volume_decision)."""
    volume_decision(cfg.threshold, cfg.tta, None)
    geometry = geometry_summary(data.volumes)
    logger.log("FINGERPRINT", {"cases": len(data.volumes.cases), "modality": ",".join(data.volumes.channel_names),
                               "spacing_median_mm": "x".join(f"{s:g}" for s in geometry["spacing_median_mm"]),
                               "anisotropy": geometry["anisotropy"],
                               "shape_median": "x".join(map(str, geometry["shape_median"]))})
    chosen = f"--dims auto: {data.dims_reason}; " if data.dims_reason else ""
    logger.log("RECIPE", {"flag": "dims", "value": data.dims, "reason": chosen + DIMS[data.dims].description
                          + (f", {data.context} on each side" if data.context else "")})
    for channel, window in zip(data.volumes.channel_names, data.windows):
        rule = (f"CT window [{window[0]:.1f}, {window[1]:.1f}]: 0.5-99.5 percentiles of the training cases' "
                "foreground" if window is not None else "each case's own 0.5-99.5 percentiles (no absolute scale)")
        logger.log("RECIPE", {"flag": "volume_normalization", "value": channel, "reason": rule})
    logger.log("RECIPE", {"flag": "target_spacing", "value": format_spacing(data.target_spacing),
                          "reason": data.spacing_reason})
    cfg = cfg.replace(target_spacing=format_spacing(data.target_spacing))  # config.yaml: a resume keeps it
    if cfg.normalization == "auto":
        cfg = cfg.replace(normalization="global")
        logger.log("RECIPE", {"flag": "normalization", "value": "global", "reason": VOLUME_NORMALIZATION})
    return cfg


def predict_label_map(cfg: Config, predictor: Any, tile_size: int | None, spec: UNetSpec, inputs: list[np.ndarray],
                      logger: runlog.Logger | None, label: str, grid: Volume | None = None,
                      target: Spacing | None = None, keep: Callable[[int, np.ndarray], None] | None = None
                      ) -> np.ndarray:
    """(I, J, K) uint8 class map of one case from its normalized slice inputs k = 0..K-1 (predict_images),
    or for a 3D network from its one (I, J, K, C) input, by sliding windows of --patch_size (--tta: mirrored).

    target: the spacing (mm) the inputs were resampled to; the class probabilities then go back onto
    `grid` (the case as read: its shape and spacing) before the argmax. None: inputs on the case's grid.
    keep(c, probabilities): given each class's probability map (I, J, K) on the case's grid, in class order
    (predict's --save_probabilities).
    """
    if spec.dims == 3:
        patch = parse_patch_size(cfg.patch_size)
        if patch is None:
            raise UNetError(f"--model_dir={cfg.model_dir}: a 3D model needs its patch size (model.json volume record)")
        probs = sliding_window_predict(predictor, inputs[0], patch, overlap=SLIDING_OVERLAP,
                                       batch_size=batch_or_default(cfg), mirror=bool(cfg.tta),
                                       mirror_axes=mirror_axes_in_effect(cfg.mirror_axes))
        if target is None and keep is None:
            return probs.argmax(-1).astype(np.uint8)
        class_maps = (probs[..., c] for c in range(probs.shape[-1]))
    else:
        slices = predict_images(predictor, spec, inputs, tile_size=tile_size, max_tile_size=cfg.max_tile_size,
                                context=cfg.tile_context, batch_size=batch_or_default(cfg), tta=bool(cfg.tta), logger=logger,
                                label=label)
        if target is None and keep is None:
            return np.stack([p.argmax(-1) for p in slices], axis=-1).astype(np.uint8)
        # one class at a time: a CT's stacked probabilities of every class would double the memory
        class_maps = (np.stack([p[..., c] for p in slices], axis=-1) for c in range(slices[0].shape[-1]))
    if target is not None:
        if grid is None:
            raise UNetError(f"{label}: resampled inputs need the case's own grid to predict onto")
        class_maps = class_maps_on_grid(class_maps, grid.shape, grid.spacing, target)
    if keep is not None:
        class_maps = _kept(class_maps, keep)
    return most_likely_class(class_maps)


def _kept(class_maps: Iterator[np.ndarray], keep: Callable[[int, np.ndarray], None]) -> Iterator[np.ndarray]:
    for c, values in enumerate(class_maps):
        keep(c, values)
        yield values


class VolumeEvaluator:
    """The validation cases of a volume run, predicted (predict_label_map) and scored per case in mm
    (evaluation.volumes), as evaluate does.

    Calling it, evaluate(model, step), is the training loop's evaluation: eval_results of the cases, also
    written to model_dir/`results_name` with the `origin` provenance block and logged as ("eval", step).
    `tta` is the mirroring it applies by default (training: --tta, False unset; evaluate: the run's
    decision); `decision_record`, how that rule was chosen, goes into the results it writes under it.
    `latest` keeps the scores of its last prediction under that default (cli.decide.PlainPass), which the
    end-of-training decision reuses.
    """

    def __init__(self, cfg: Config, spec: UNetSpec, data: VolumeSlices, val_idx: np.ndarray, logger: runlog.Logger,
                 normalization: str, origin: dict[str, Any] | None = None, results_name: str = EVAL_RESULTS, *,
                 tta: bool = False, decision_record: dict[str, Any] | None = None):
        self.cfg, self.spec, self.data, self.logger = cfg, spec, data, logger
        self.origin, self.results_name = origin, results_name
        self.tta, self.decision_record = bool(tta), decision_record
        self.num_images = len(val_idx)
        self.cases = [int(c) for c in np.unique(data.case_of_slice[val_idx])]
        self.inputs = {c: [normalize_image(data.images[i], normalization) for i in data.slices_of(c)]
                       for c in self.cases}
        self.latest: PlainPass | None = None
        # Passes of a mirrored prediction: 2 ** (mirror axes) for a 3-D network, a slice's 8 flips otherwise.
        self.mirror_passes = (len(mirror_flips(mirror_axes_in_effect(cfg.mirror_axes))) if spec.dims == 3
                              else FLIP_PASSES)

    def predict(self, model: Any, tta: bool, label: str = "evaluate") -> dict[str, np.ndarray]:
        """case name -> (I, J, K) uint8 label map of each validation case, mirrored or not (`tta`)."""
        predictor, tile_size = as_predictor(model, self.cfg.tile_size)
        cfg = self.cfg.replace(tta=bool(tta))
        return {case.name: predict_label_map(cfg, predictor, tile_size, self.spec, self.inputs[c], self.logger,
                                             label, case.image, self.data.target_spacing)
                for c, case in ((c, self.data.volumes.cases[c]) for c in self.cases)}

    def score(self, predictions: dict[str, np.ndarray]) -> dict[str, Any]:
        """evaluation.volumes.score_volumes of the label maps against the cases' labels (mean_dice: the mean
        over cases and foreground classes of the per-case Dice)."""
        cases = [self.data.volumes.cases[c] for c in self.cases]
        return score_volumes(predictions, {case.name: case.labels.array for case in cases},
                             {case.name: case.image.spacing for case in cases}, self.data.class_names,
                             self.cfg.nsd_tolerance)

    def __call__(self, model: Any, step: int, tta: bool | None = None,
                 scored: dict[str, Any] | None = None) -> dict[str, Any]:
        """eval_results under mirroring `tta` (None: the default); `scored` (score() of label maps already
        predicted so) is written instead of predicting again."""
        tta = self.tta if tta is None else bool(tta)
        if scored is None:
            started = time.perf_counter()
            predictions = self.predict(model, tta)
            seconds = time.perf_counter() - started
            scored = self.score(predictions)
            if tta == self.tta:
                self.latest = PlainPass(int(step), tta, seconds, scored)
        results = dict(scored)
        results.update(fold=self.cfg.fold, num_folds=self.cfg.num_folds, step=int(step), num_images=self.num_images,
                       tta=tta, dims=self.data.dims)
        if self.origin is not None:
            results["provenance"] = self.origin
        if self.decision_record is not None and tta == self.tta:
            results["decision"] = self.decision_record
        write_eval_results(pathlib.Path(self.cfg.model_dir) / self.results_name, results)
        # A re-scoring under the rule chosen at the end is a series of its own: the curves stay unmirrored.
        series = "eval" if tta == self.tta else "eval_decided"
        self.logger.log((series, int(step)), {k: v for k, v in results.items()
                                              if isinstance(v, (int, float)) and not isinstance(v, bool)})
        return results


def make_volume_evaluator(cfg: Config, spec: UNetSpec, data: VolumeSlices, val_idx: np.ndarray,
                          logger: runlog.Logger, normalization: str, origin: dict[str, Any] | None = None,
                          results_name: str = EVAL_RESULTS, tta: bool = False,
                          decision_record: dict[str, Any] | None = None) -> VolumeEvaluator:
    """The VolumeEvaluator of the validation slices `val_idx` (their cases, whole)."""
    return VolumeEvaluator(cfg, spec, data, val_idx, logger, normalization, origin, results_name, tta=tta,
                           decision_record=decision_record)


def volume_decision(threshold_flag: str | float | None, tta_flag: bool | None,
                    recorded: dict[str, Any] | None) -> Decision:
    """The decision a volume run applies (inference.decision.resolve_decision: flags win, unset --tta takes
    the run's choice). Volumes keep the argmax: a numeric --threshold is refused in one line."""
    if parse_threshold(threshold_flag) not in (AUTO, ARGMAX):
        raise UNetError(f"--threshold={threshold_flag}: volume runs label by the argmax (a threshold is chosen "
                        "for 2-D images only); drop the flag or give --threshold argmax")
    return resolve_decision(threshold_flag, tta_flag, recorded)


def trained_cases(run_dir: str | os.PathLike, data_dir: str) -> dict[str, list[str]]:
    """case name -> the runs that trained on it, over run_dir and its --init_from ancestry, counting only
    runs that read the same data folder."""
    seen: dict[str, list[str]] = {}
    visited: set[str] = set()
    current: str | None = str(run_dir)
    while current is not None and os.path.realpath(current) not in visited:
        visited.add(os.path.realpath(current))
        config = read_run_config(current)
        same = config.get("data_dir") is not None and os.path.realpath(config["data_dir"]) == os.path.realpath(data_dir)
        volume = load_run_record(current).volume if (pathlib.Path(current) / "model.json").is_file() else None
        if same and volume:
            for case in volume.get("train_cases", []):
                seen.setdefault(case, []).append(f"{current} (fold {config.get('fold')} of {config.get('num_folds')})")
        current = config.get("init_from")
    return seen


def check_evaluation_cases(cfg: Config, run_dir: pathlib.Path, val_cases: list[str]) -> None:
    """Refuse (one line) to score on cases the run or its ancestors trained on (the volume leak guard)."""
    refuse_trained_on(val_cases, trained_cases(run_dir, cfg.data_dir), "cases", cfg.fold, cfg.num_folds)


def require_volume_run(cfg: Config, info: RunRecord) -> dict[str, Any]:
    """The run's volume record (volume_record_of: an exported --model_path's from its run folder), or one line
    saying the model was trained on 2D images."""
    record = volume_record_of(cfg, info)
    if record is None:
        raise UNetError(f"--model_dir={cfg.model_dir}: its model was trained on 2D images, not volumes; "
                        f"it cannot score or predict the volumes of {cfg.input or cfg.data_dir}")
    return record


def with_recorded_patch(cfg: Config, record: dict[str, Any]) -> Config:
    """cfg with the 3D run's training patch (its sliding window) and mirror axes (all three for runs recorded
    before they were chosen); other runs unchanged. A different --patch_size is refused: the windows are the
    patches the network learned on. A --mirror_axes given here wins, as --tta does."""
    if "patch_size" not in record:
        return cfg
    recorded = ",".join(str(int(p)) for p in record["patch_size"])
    if cfg.patch_size is not None and parse_patch_size(cfg.patch_size) != tuple(record["patch_size"]):
        raise UNetError(f"--patch_size={cfg.patch_size}: the model in {cfg.model_dir} was trained on {recorded} "
                        "patches; drop the flag")
    mirror = cfg.mirror_axes if cfg.mirror_axes != "auto" else format_mirror_axes(record.get("mirror_axes", AXES))
    return cfg.replace(patch_size=recorded, mirror_axes=mirror)


def run_volume_evaluation(cfg: Config, logger: runlog.Logger) -> dict[str, Any]:
    """--exec_mode evaluate on volumes: the fold's validation cases, cut and scaled as the run recorded."""
    model, spec, info = restore_model(cfg, logger)
    record = require_volume_run(cfg, info)
    cfg = with_recorded_patch(cfg, record)
    log_recorded_dims(record, logger)
    data = load_volume_slices(cfg.data_dir, images_dir=cfg.images_dir, masks_dir=cfg.masks_dir,
                              num_classes=cfg.num_classes, dims=record["dims"], context_slices=record["context_slices"],
                              windows=windows_from_record(record["normalization"]),
                              target_spacing=recorded_target(record))
    if tuple(data.class_names) != tuple(info.class_names):
        raise UNetError(f"{cfg.data_dir}: classes {data.class_names} differ from the model's {info.class_names}")
    _, val_idx = case_fold_split(data.case_of_slice, cfg.num_folds, cfg.fold)
    source = run_source(cfg.exec_mode, cfg.model_dir, cfg.init_from, cfg.model_path)
    if source is not None and not cfg.allow_training_slices:
        check_evaluation_cases(cfg, source.path, cases_of(data, val_idx))
    origin = provenance(cfg, info, cfg.data_dir, cases_of(data, val_idx))
    decision = volume_decision(cfg.threshold, cfg.tta, info.decision)
    chosen = info.decision if decision == resolve_decision("auto", None, info.decision) else None
    logger.log("PARAMETER", {"decision": decision.describe()})
    evaluate = make_volume_evaluator(cfg, spec, data, val_idx, logger, info.normalization, origin,
                                     evaluation_results_name(cfg), decision.tta, chosen)
    return evaluate(model, info.step)


def log_recorded_dims(record: dict[str, Any], logger: runlog.Logger) -> None:
    """The slicing and resampling in effect for a trained run: its record's, whatever --dims,
    --context_slices and --target_spacing say."""
    patch = {"patch_size": ",".join(map(str, record["patch_size"]))} if "patch_size" in record else {}
    logger.log("PARAMETER", {"dims": record["dims"], "context_slices": record["context_slices"], **patch,
                             "target_spacing": format_spacing(recorded_target(record)),
                             "dims_reason": "recorded by the training run (model.json volume)"})


def volume_record_of(cfg: Config, info: RunRecord) -> dict[str, Any] | None:
    """The run's volume record: in info, or (for an exported --model_path) in the run folder it came from."""
    if info.volume is not None:
        return info.volume
    source = run_source(cfg.exec_mode, cfg.model_dir, cfg.init_from, cfg.model_path)
    if source is None or not (source.path / "model.json").is_file():
        return None
    return load_run_record(source.path).volume


def prediction_dir(cfg: Config) -> pathlib.Path:
    """A fresh, empty folder for one predict's files, created here: --output_dir (refused if it holds
    files, which would mix with this predict's), else the next of model_dir/predictions/001, 002, ...
    An earlier predict's files are never overwritten nor mixed in."""
    if cfg.output_dir:
        out = pathlib.Path(cfg.output_dir)
        if out.is_dir() and any(out.iterdir()):
            raise UNetError(f"--output_dir {out}: not empty; predictions go to an empty or new folder so they "
                            f"never mix with earlier files")
        out.mkdir(parents=True, exist_ok=True)
        return out
    root = pathlib.Path(cfg.model_dir) / PREDICTIONS
    root.mkdir(parents=True, exist_ok=True)
    number = 1 + max((int(p.name) for p in root.iterdir() if p.name.isdigit()), default=0)
    out = root / f"{number:03d}"
    out.mkdir()  # the run lock holds off another predict in this model_dir; mkdir fails rather than share
    return out


PROBABILITIES_DIR = "probabilities"  # --save_probabilities: beside the label maps, where no scorer looks for cases
# The scl_slope of a probability file: NIfTI stores it as float32, and float32(1/255) lies above 1/255, so a
# stored 255 would read back as 1.00000006; the float32 just below keeps every probability within [0, 1].
PROBABILITY_SLOPE = float(np.nextafter(np.float32(1 / 255), np.float32(0)))


def quantized_probability(values: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] as uint8 0..255 (the nearest 1/255; PROBABILITY_SLOPE as scl_slope reads them back)."""
    return np.clip(np.rint(np.asarray(values, np.float32) * 255.0), 0, 255).astype(np.uint8)


def run_volume_prediction(cfg: Config, logger: runlog.Logger, model: Any, spec: UNetSpec, info: RunRecord,
                          record: dict[str, Any]) -> list[pathlib.Path]:
    """Predict every volume of --input (default: --data_dir's imagesTs/) into output_dir/CASE.nii.gz,
    each with its input's voxel grid, affine, qform/sform and codes (data.volumes.write_nifti); with
    --save_probabilities also output_dir/probabilities/CASE.nii.gz, (I, J, K, classes) on that grid."""
    cfg = with_recorded_patch(cfg, record)
    log_recorded_dims(record, logger)
    decision = volume_decision(cfg.threshold, cfg.tta, info.decision)  # flags win over the run's choice
    logger.log("PARAMETER", {"decision": decision.describe()})
    cfg = cfg.replace(tta=decision.tta)  # predict_label_map mirrors by cfg.tta
    cases = prediction_cases(cfg.input or cfg.data_dir, len(record["channel_names"]))
    predictor, tile_size = as_predictor(model, cfg.tile_size)
    out, written, seconds = prediction_dir(cfg), [], []
    write_json(out / PROVENANCE, provenance(cfg, info, cfg.input or cfg.data_dir, [name for name, _ in cases]))
    for name, image in cases:
        start = time.perf_counter()
        inputs = [normalize_image(x, info.normalization) for x in case_inputs(image, record)]
        if inputs[0].shape[-1] != spec.in_channels:
            raise UNetError(f"{image.path}: slices of {inputs[0].shape[-1]} channels, the model expects "
                            f"{spec.in_channels}")
        kept: list[np.ndarray] = []  # --save_probabilities: per class, 0..255 for 0..1
        labels = predict_label_map(cfg, predictor, tile_size, spec, inputs, logger, f"predict {name}", image,
                                   recorded_target(record),
                                   keep=(lambda c, p: kept.append(quantized_probability(p))) if cfg.save_probabilities else None)
        written.append(write_nifti(labels, image, out / f"{name}.nii.gz"))
        if kept:
            (out / PROBABILITIES_DIR).mkdir(exist_ok=True)
            write_nifti(np.stack(kept, axis=-1), image, out / PROBABILITIES_DIR / f"{name}.nii.gz", scale=PROBABILITY_SLOPE)
        seconds.append(time.perf_counter() - start)
    logger.log("PREDICT", {"cases": len(written), "output": str(out), "seconds_per_case": round(float(np.mean(seconds)), 3),
                           "dims": record["dims"], "step": info.step, "peak_memory_mb": peak_memory_mb()})
    return written
