"""``python -m promptfence``: the same CLI, for environments without the console script."""

from promptfence.cli import main

raise SystemExit(main())
