"""`python -m up_fast.cli`: the `up-fast` console script."""

import sys

from up_fast.cli import main

sys.exit(main())
