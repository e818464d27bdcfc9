"""`python -m alexnet_cuda ...` is `alexnet-cuda ...`."""
import sys

from .cli import main

sys.exit(main())
