"""`python -m dp_train`: the command-line entry point."""

from dp_train.cli.main import main

raise SystemExit(main())
