"""The command line: `python -m dp_train <command>`, recipe files, the checks a recipe passes before any work,
and one-line parse errors."""
