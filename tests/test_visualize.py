"""Weight histograms (operation_mode: visualize) show the kernels the forward pass really uses."""
import pytest
import numpy as np

from unet_medical.model.quantizers import QuantizationConfig
from unet_medical.model.quantization import quantize_unet
from unet_medical.model.unet import UNetSpec, build_unet
from unet_medical.cli.visualize import conv_kernels, write_weight_histograms


@pytest.mark.slow
def test_histograms_of_a_q04_model(tmp_path):
    model = quantize_unet(build_unet(UNetSpec(base_filters=4, depth=2, padding="same", dropout=0.0)),
                          QuantizationConfig(quantization="FIXED", weight_i_width=0, weight_f_width=4))
    kernels = dict(conv_kernels(model))
    assert len(kernels) == 13
    # Q0.4 (the paper's counting: 4 bits) has at most 16 levels; the first conv is kept in float.
    assert len(np.unique(kernels["enc1_conv2"])) <= 16
    assert len(np.unique(kernels["enc1_conv1"])) > 16
    written = write_weight_histograms(model, tmp_path)
    assert written[0].name == "weights_all_layers.png" and len(written) == 14
    assert all(p.stat().st_size > 5000 for p in written)
