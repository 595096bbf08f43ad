"""`python -m eqx_bigbird.cli COMMAND ...`: the same as `eqx-bigbird COMMAND ...`."""

import sys

from .main import main

sys.exit(main())
