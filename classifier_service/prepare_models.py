"""Download the configured torchvision weights: ``python -m classifier_service.prepare_models``.

Reads the replica's settings (``IMGQ_TORCHVISION_MODELS``, ``IMGQ_WEIGHTS_DIR``) and, for
each model whose weights file is not yet in the weights folder, downloads the file torchvision
would (``torchvision.models.get_model_weights(name).DEFAULT.url``), checking the hash prefix
in its name.  Run it once wherever the network allows, before starting replicas; a replica
never downloads anything itself.  It needs torch (the ``export`` extra), as does exporting the
models afterwards; the classifier image has neither, but its ``export`` build stage has both,
and can fill a weights volume and a model-cache volume that replicas mount at ``/models``::

    docker build -f Dockerfile.classifier --target export -t imgq-export .
    docker run --rm -v model-weights:/weights -v model-cache:/models \
        -e IMGQ_WEIGHTS_DIR=/weights -e IMGQ_TORCHVISION_MODELS=resnet18 imgq-export sh -c \
        "python -m classifier_service.prepare_models && python -m classifier_service.export \
        --cache /models"

Where there is no network, fetch the URLs it prints elsewhere and copy the files into the
weights folder by hand.  Exit status: 0 when every file is present, 1 when any is missing.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from classifier_service.settings import ClassifierSettings
from shared.config_reference import environment_help, parser_for
from shared.errors import SettingsError
from shared.settings import VARIABLES, process_env


def prepare(names: tuple[str, ...], weights_dir: Path) -> list[str]:
    """Download what is missing; returns the names whose file is still missing."""
    # Imported here, not above: --help, and a configuration with nothing to prepare, need
    # no torch (the classifier image has none).
    import torch

    from classifier_service.torchvision_models import weights_file_name, weights_url

    failed = []
    for name in names:
        target = weights_dir / weights_file_name(name)
        if target.is_file():
            print(f"{name}: {target} already present")
            continue
        url = weights_url(name)
        match = torch.hub.HASH_REGEX.search(target.name)
        try:
            weights_dir.mkdir(parents=True, exist_ok=True)
            # Writes to a temporary file and renames it, so a failure leaves no partial file.
            torch.hub.download_url_to_file(
                url, str(target), hash_prefix=match.group(1) if match else None, progress=True
            )
        except Exception as exc:  # network, disk or hash: all mean "put it there by hand"
            print(
                f"{name}: could not download {url}: {exc}\n"
                f"  download it elsewhere and copy it to {target}",
                file=sys.stderr,
            )
            failed.append(name)
        else:
            print(f"{name}: downloaded {target}")
    return failed


def main(argv: Sequence[str] | None = None) -> int:
    environment = environment_help(
        [VARIABLES[name] for name in ("IMGQ_TORCHVISION_MODELS", "IMGQ_WEIGHTS_DIR")],
        "It takes no arguments: it reads the classifier's settings, of which these matter:",
    )
    description = (
        "Download the weights files of the torchvision models a replica is configured to "
        "serve, where they are missing. Exit status: 0 when every file is present, 1 when "
        "any is missing, 2 for a bad setting."
    )
    parser_for("python -m classifier_service.prepare_models", description, environment).parse_args(
        argv
    )
    logging.basicConfig(level=logging.INFO)
    try:
        settings = ClassifierSettings.from_env(process_env())
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    if not settings.torchvision_models:
        print("IMGQ_TORCHVISION_MODELS is empty: nothing to prepare")
        return 0
    return 1 if prepare(settings.torchvision_models, settings.weights_dir) else 0


if __name__ == "__main__":
    sys.exit(main())
