"""The ``ruc-service`` command line: one module per command in ``cli.commands``."""
