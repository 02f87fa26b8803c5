"""The ``tracklane`` command: an alias of :mod:`tracklane.cli` (``python -m tracklane._cli``)."""

from __future__ import annotations

import sys

from tracklane.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
