"""``python -m classifier_service.export``: the exporter's command, named where replicas, images
and operators run it; its code, which needs torch, is in ``torch_tools/export.py``."""

from __future__ import annotations

import sys

from classifier_service.torch_tools.export import main

if __name__ == "__main__":
    sys.exit(main())
