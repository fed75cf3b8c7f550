"""``python -m bench [--quick] [--json PATH]``."""

from bench.run import main

raise SystemExit(main())
