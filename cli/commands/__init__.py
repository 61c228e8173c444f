"""One module per ``ruc-service`` sub-command; each has ``register(subparsers)``."""
