"""The ``imgq`` command run in-process, its exit status and output captured."""

from __future__ import annotations

import pytest

from imgq_cli.main import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``imgq *argv``: its exit status, then what it wrote to stdout and to stderr."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err
