"""``python -m wrapper``: the same as the ``application-grid-wrapper`` console script."""

import sys

from wrapper.cli import main

sys.exit(main())
