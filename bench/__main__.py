"""``python -m bench``: the same as ``cascade-bench``."""

from bench.cli import main

raise SystemExit(main())
