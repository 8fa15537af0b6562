"""`python -m unet_medical ...` is the `unet-medical` command."""
import sys

from unet_medical.cli.main import main

sys.exit(main())
