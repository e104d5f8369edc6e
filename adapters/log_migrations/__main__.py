"""``python -m adapters.log_migrations revision -m "why"``: a new migration script of the prediction log."""

from adapters.log_migrations import main

raise SystemExit(main())
