"""`python -m bench`: see bench/run.py and bench/RESULTS.md."""

from __future__ import annotations

from bench.run import main

raise SystemExit(main())
