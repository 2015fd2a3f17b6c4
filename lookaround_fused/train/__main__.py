"""``python -m lookaround_fused.train``."""

from lookaround_fused.train.cli import main

raise SystemExit(main())
