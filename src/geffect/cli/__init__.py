"""Command line: one module per command, each with `register(subparsers)` that sets `func` on its parser."""
