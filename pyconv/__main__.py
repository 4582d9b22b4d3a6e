"""``python -m pyconv``: the same as the ``pyconv`` command."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
