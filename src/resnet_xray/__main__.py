"""``python -m resnet_xray`` (and ``torchrun -m resnet_xray``) run the CLI."""

import sys

from .cli import main

sys.exit(main())
