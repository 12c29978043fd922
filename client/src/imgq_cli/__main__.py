"""``python -m imgq_cli``: the ``imgq`` command."""

from __future__ import annotations

import sys

from imgq_cli.main import main

sys.exit(main())
