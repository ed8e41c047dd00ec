"""``python -m cli``: the same entry point as the ``peerline`` console script."""

from __future__ import annotations

import sys

from cli.main import main

sys.exit(main())
