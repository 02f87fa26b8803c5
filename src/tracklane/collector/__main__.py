"""``python -m tracklane.collector [--port PORT] [--host HOST] [--db FILE] [--write-key KEY]``."""

from __future__ import annotations

import sys

from tracklane.collector._options import main

if __name__ == "__main__":
    sys.exit(main())
