"""The ``imgq`` command on a folder of photos, as a user would run it: one process,
``imgq classify FOLDER --out FILE``, timed from its start to its exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.load import LoadResult
from bench.photos import image_files, write_variants
from compose.stack import REPO

# The client's packages, from this checkout (they are a distribution of their own).
CLIENT_SRC = REPO / "client" / "src"


def photos(sources: Path, count: int, folder: Path) -> list[Path]:
    """``count`` distinct photos made from those in ``sources``, at their own size (so that a
    job costs what the HTTP rows' jobs cost), each re-encoded at its own quality: none is
    answered from an earlier result."""
    return write_variants(image_files(sources), count, folder)


def run(base_url: str, model: str, folder: Path, out: Path, timeout: float) -> LoadResult:
    """One run of the command; every line of its --out that says succeeded is a job done."""
    path = os.pathsep.join(filter(None, [str(CLIENT_SRC), os.environ.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "imgq_cli", "classify", str(folder), "-m", model]
    argv += ["--out", str(out), "--url", base_url, "--quiet"]
    started = time.perf_counter()
    done = subprocess.run(
        argv,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    elapsed = time.perf_counter() - started
    result = LoadResult(elapsed=elapsed)
    for line in out.read_text().splitlines() if out.exists() else ():
        record = json.loads(line)
        if record.get("status") == "succeeded":
            result.jobs += 1
        else:
            result.failed += 1
            if len(result.errors) < 10:
                result.errors.append(f"{record.get('image')}: {record.get('error')}")
    if done.returncode not in (0, 1):
        result.errors.append(f"imgq exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return result
