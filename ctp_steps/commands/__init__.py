"""One module per stage with its CLI subcommands; each defines `register(subparsers)`."""
