"""Extra ``conveyor`` subcommands. Each module here defines ``register(group)``;
the CLI loads them on first use (see ``conveyor.cli``)."""
