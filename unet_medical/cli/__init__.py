"""Runtime: the exec modes (modes) and what they share, assembled from the stages below: flags and
config (config), restoring a run and building its data and model (assemble), benchmark, export mode,
the quantization/compression study and the augmentation tool."""
import unet_medical  # noqa: F401,E402  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
