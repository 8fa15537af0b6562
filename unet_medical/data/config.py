"""The data stage's settings: where the data is, how it is read, normalized, split, cropped and
augmented. Standard library only (no TensorFlow): the command line builds its flags from it."""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from unet_medical.base.errors import UNetError
from unet_medical.data.patches3d import VolumeAugment, parse_patch_size
from unet_medical.data.mirror_axes import parse_mirror_axes
from unet_medical.data.volume_dims import AUTO, DEFAULT_DIMS, dims_choices, slice_mode
from unet_medical.data.volume_resample import parse_target_spacing
from unet_medical.base.settings import Settings, at_least, between, require, setting


@dataclasses.dataclass(frozen=True)
class DataConfig(Settings):
    """Where the training/test data is and how it becomes batches (unet_medical.data)."""

    section: ClassVar[str] = "data"
    title: ClassVar[str] = "data: where it is, how it is read, split, cropped and augmented"

    data_dir: str = setting("data/synthetic", "ISBI layout (train-volume.tif, train-labels.tif, "
                           "test-volume.tif) or images/ + masks/ folders")
    image_stack: str | None = setting(None, "training image TIFF stack inside data_dir (generic layout)")
    mask_stack: str | None = setting(None, "training mask TIFF stack inside data_dir (generic layout)")
    images_dir: str = setting("images", "folder of training images inside data_dir (folder layout)")
    masks_dir: str = setting("masks", "folder of masks inside data_dir, paired with images by file name")
    num_classes: int | None = setting(None, "number of classes for N-class masks (default: binary)", rule=at_least(2))
    input: str | None = setting(None, "predict (and export's calibration/parity images): a TIFF stack, an image or "
                               "a folder (default: data_dir/test-volume.tif; export: data_dir's training images)")
    normalization: str = setting("auto", "intensity normalization: global (fixed scale), per_image (percentile "
                                "clip and rescale) or auto (default: chosen from the data)",
                                choices=("auto", "global", "per_image"))
    foreground_sampling: float | None = setting(None, "fraction of training crops centred on a rare-class pixel "
                                               "(default: chosen from the data)", rule=between(0, 1, "a fraction"))
    class_weights: str = setting("auto", "cross-entropy weight per class, e.g. '1,1.5', or none (default: auto, "
                                "chosen from the data)")
    fold: int = setting(0, "which contiguous block of slices is held out for validation")
    num_folds: int = setting(5, "number of cross-validation folds (contiguous blocks)", rule=at_least(2))
    augment: bool = setting(True, "data augmentation: flips, rotations, elastic deformation, crop-resize, "
                           "intensity, noise (--no-augment: random crops only)")
    augment_params: str | None = setting(None, "augmentation probabilities/strengths as key=value pairs, e.g. "
                                        "'elastic_prob=0.8,elastic_sigma=12,scale_range=0.9:1.1' (keys: "
                                        "unet_medical.data.augment.AugmentConfig, with --dims 3 "
                                        "unet_medical.data.patches3d.VolumeAugment; in YAML also a mapping)")
    dims: str = setting(DEFAULT_DIMS, "how volumes feed the network: 2 = single slices, 2.5 = a slice and its "
                        "--context_slices neighbours as channels, 3 = a 3D U-Net on patches (--patch_size), "
                        "auto (default) = 3 for near-isotropic voxels (anisotropy <= 3) with a median case of at "
                        "least 16 voxels per side and --padding same, else 2 (a RECIPE line says why); "
                        "2-D images ignore it",
                        choices=dims_choices())
    context_slices: int = setting(1, "--dims 2.5: neighbouring slices taken on each side", rule=at_least(0))
    patch_size: str | None = setting(None, "--dims 3: training patch in voxels, one side (a cube) or I,J,K, "
                                    "each a multiple of 2**depth (default: chosen from the median case shape, at "
                                    "most 64 per side)")
    mirror_axes: str = setting("auto", "volumes: the voxel axes (0 = I, 1 = J, 2 = K) that training flips (and, with --dims "
                               "3, test-time mirroring averages over), e.g. 0,2, or none (default: auto, every axis "
                               "except one along which two foreground classes keep one order in 95 percent of the "
                               "training cases; a RECIPE line says why); 2-D images ignore it")
    target_spacing: str = setting("auto", "volumes: voxel spacing in mm the cases are resampled to before training "
                                  "(I,J,K, e.g. 1,1,2.5), none (each case on its own grid) or auto (default: the "
                                  "median spacing, only when some case is more than 10 percent off it on some axis; a "
                                  "RECIPE line says why); predict resamples back to each input's grid")
    crop_size: int | None = setting(None, "training input tile (default: chosen from the data for same padding, "
                                   "572 = the paper's tile for valid padding)", rule=at_least(8))

    def check(self) -> None:
        if self.dims != AUTO:
            slice_mode(self.dims)  # a designed but unbuilt mode stops here with one line
        parse_patch_size(self.patch_size)  # one line naming --patch_size
        parse_mirror_axes(self.mirror_axes)  # one line naming --mirror_axes
        parse_target_spacing(self.target_spacing)  # one line naming --target_spacing
        require(0 <= self.fold < self.num_folds, "fold", self.fold, f"0 <= fold < num_folds ({self.num_folds})")
        if self.class_weights not in ("auto", "none"):
            try:
                weights = [float(w) for w in self.class_weights.split(",")]
            except ValueError:
                weights = []
            require(len(weights) >= 2 and min(weights) > 0, "class_weights", self.class_weights,
                    "auto, none, or one positive weight per class separated by commas")
        if self.augment_params is not None:  # raises UNetError naming the bad key or value
            augment_config(self.augment_params, self.dims if self.dims != AUTO else augment_dims(self.augment_params))


def parse_augment_params(text: str) -> dict[str, Any]:
    """'a=1,b=0.5:0.9' -> {'a': 1.0, 'b': (0.5, 0.9)}; integers stay int (elastic_grid)."""
    params: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise UNetError(f"--augment_params: {item!r} is not key=value")
        try:
            numbers = [int(v) if v.strip().lstrip("-").isdigit() else float(v) for v in value.split(":")]
        except ValueError:
            raise UNetError(f"--augment_params: {key.strip()}={value!r}: expected a number or low:high") from None
        params[key.strip()] = tuple(numbers) if len(numbers) > 1 else numbers[0]
    return params


def augment_dims(augment_params: str | None) -> str:
    """Which network --augment_params' keys are for when --dims is auto: "3" when every key is a
    VolumeAugment field and some key is not a 2-D one (affine_prob, zoom_range, ...), else "2"."""
    from unet_medical.data.augment import AugmentConfig  # imports TensorFlow: only when augmentation is configured

    keys = set(parse_augment_params(augment_params or ""))
    volume_keys = {f.name for f in dataclasses.fields(VolumeAugment)}
    image_keys = {f.name for f in dataclasses.fields(AugmentConfig)}
    return "3" if keys <= volume_keys and not keys <= image_keys else "2"


def augment_config(augment_params: str | None, dims: str = "2") -> Any:
    """The augmentation settings of `--augment_params` for a `dims` network: defaults overridden by its
    key=value pairs; data.augment.AugmentConfig for 2-D images and slices, data.patches3d.VolumeAugment
    for --dims 3 patches."""
    if dims == "3":
        kind: Any = VolumeAugment
    else:
        from unet_medical.data.augment import AugmentConfig  # imports TensorFlow: only when augmentation is configured

        kind = AugmentConfig
    params = parse_augment_params(augment_params or "")
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(params) - known)
    if unknown:
        network = "a --dims 3 network" if dims == "3" else "2-D images and slices"
        raise UNetError(f"--augment_params: unknown key(s) {', '.join(unknown)} for {network}; "
                        f"expected some of {', '.join(sorted(known))}")
    try:
        return kind(**params)
    except UNetError as exc:
        raise UNetError(f"--augment_params: {exc}") from None
