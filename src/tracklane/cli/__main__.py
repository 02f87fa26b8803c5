"""``python -m tracklane.cli``: the ``tracklane`` command."""

from __future__ import annotations

import sys

from tracklane.cli import main

if __name__ == "__main__":
    sys.exit(main())
