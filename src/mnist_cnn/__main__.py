"""`python -m mnist_cnn` and `torchrun ... -m mnist_cnn train ...` run the CLI."""

import sys

from .cli import main

sys.exit(main())
