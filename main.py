"""U-Net medical image segmentation: NVIDIA's entry point, kept as a thin layer over `unet-medical`.

    python main.py --exec_mode train_and_evaluate --data_dir DATA --model_dir RESULTS [flags]
    python main.py --config run.yaml --exec_mode predict
    python main.py train --data_dir DATA --model_dir RESULTS      (the unet-medical commands work too)
"""
import sys

from unet_medical.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
