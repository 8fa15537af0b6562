"""U-Net model, its building blocks and model transforms (quantization, Tucker compression)."""
import unet_medical  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
