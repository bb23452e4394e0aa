"""python -m evaluation (see evaluation.cli)."""

from evaluation.cli import main

raise SystemExit(main())
