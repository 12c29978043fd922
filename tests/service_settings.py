"""What the services read from the environment, for the checks of deployment files.

A deployment file that sets an ``IMGQ_*`` variable no service reads is a typo or a setting
that was renamed: either way the service silently runs with its default. The names are taken
from the modules that read settings, as string literals, so the list never goes stale.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Every module that reads IMGQ_* variables.
SETTINGS_MODULES = (
    "gateway/settings.py",
    "gateway/senders.py",
    "gateway/clients.py",
    "gateway/access_log.py",
    "gateway/batch_store.py",
    "gateway/webhook_settings.py",
    "gateway/event_loop.py",
    "gateway/process_count.py",
    "classifier_service/settings.py",
    "shared/settings.py",
    "shared/topology.py",
    "shared/catalog.py",
    "shared/tracing.py",
    "shared/logs.py",
)

# Names a deployment file may set before the code that reads them lands (each with its reason).
# Empty: IMGQ_BROKER_URLS, the last one, is read by shared/settings.py now.
PENDING: frozenset[str] = frozenset()

_NAME = re.compile(r"""["'](IMGQ_[A-Z0-9_]+)["']""")


def variables_read(modules: tuple[str, ...] = SETTINGS_MODULES) -> frozenset[str]:
    names: set[str] = set()
    for module in modules:
        names.update(_NAME.findall((REPO / module).read_text(encoding="utf-8")))
    return frozenset(names)


def unknown_variables(names: Iterable[str], also: tuple[str, ...] = ()) -> list[str]:
    """The IMGQ_* names among ``names`` that neither the services (nor the modules in
    ``also``) read, and that are not pending."""
    known = variables_read((*SETTINGS_MODULES, *also)) | PENDING
    return sorted(name for name in names if name.startswith("IMGQ_") and name not in known)
