"""``python -m paramgroups`` runs the command line."""

from paramgroups.cli.main import main

raise SystemExit(main())
