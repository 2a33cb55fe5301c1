"""The ``stocksched`` command (entry point ``stocksched.cli:entrypoint``).

``commands`` parses and dispatches (``parser`` holds the flags); ``validate`` and
``runjob`` are the commands that work without a daemon; ``remote_commands`` talk to a
running daemon through ``remote.ApiClient``, printed by ``output``.
"""

from stocksched.cli.commands import entrypoint, main

__all__ = ["entrypoint", "main"]
