"""``python -m kernelflow``: the same as the ``kernelflow`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
