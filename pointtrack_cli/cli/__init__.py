"""The ``ptrack`` command line: presentation only (options, progress bars, tables, the one-line error boundary)
over the Python API (:mod:`pointtrack_cli.api`, :mod:`pointtrack_cli.eval`, :mod:`pointtrack_cli.finetune`)."""
from .app import app, main

__all__ = ["app", "main"]
