"""The tiny training run the run-folder tests share: flags and a 10-slice synthetic ISBI-layout stack."""
import pathlib

from unet_medical.data import synthetic

TINY = ["--padding", "same", "--base_filters", "4", "--depth", "2", "--batch_norm", "--dropout", "0",
        "--crop_size", "32", "--batch_size", "2", "--max_steps", "4", "--log_every", "2",
        "--checkpoint_every", "2", "--no-saved_model"]


def write_tiny_data(tmp_path_factory) -> pathlib.Path:
    """10 slices of 64x64 synthetic EM in the ISBI layout, in a fresh temporary folder."""
    out = tmp_path_factory.mktemp("data")
    synthetic.write_isbi_layout(out, num_slices=10, size=64, seed=0)
    return out
