"""``python -m torchkata``: the same as the ``kata`` command."""

from torchkata.cli import main

raise SystemExit(main())
