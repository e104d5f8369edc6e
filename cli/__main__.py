"""`python -m cli`: the same as the `reggaeton` console script."""

from cli.main import main

raise SystemExit(main())
