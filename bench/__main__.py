"""``python -m bench [upstream-cost | fleet | tenfold] [flags]`` (``--help`` for each)."""

from bench.cli import main

raise SystemExit(main())
