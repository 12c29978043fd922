"""``python -m classifier_service.prepare_models``: the command that downloads weights and writes
the built-in models' folders; its code, which needs torch, is in
``torch_tools/prepare_models.py``."""

from __future__ import annotations

import sys

from classifier_service.torch_tools.prepare_models import main

if __name__ == "__main__":
    sys.exit(main())
