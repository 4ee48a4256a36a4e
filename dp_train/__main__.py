"""`python -m dp_train`: the command-line entry point."""

from dp_train.cli import main

raise SystemExit(main())
