"""`python -m eqx_bigbird.convert SRC DST [options]`: the same as `eqx-bigbird convert`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
