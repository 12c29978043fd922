"""The built-in models into the repository: ``python -m classifier_service.prepare_models``.

Reads the replica's settings (``IMGQ_TORCHVISION_MODELS``, ``IMGQ_WEIGHTS_DIR``) and, for
each model whose weights file is not yet in the weights folder, downloads the file torchvision
would (``torchvision.models.get_model_weights(name).DEFAULT.url``), checking the hash prefix
in its name.  Then it writes the repository folder (``IMGQ_MODEL_DIR``) of every configured
built-in, the catalogue's (``IMGQ_MODELS``) and the torchvision ones, exporting each to ONNX
first where the model cache lacks it (``builtin_models.py``); a replica does that last step itself
for a built-in its repository lacks.  Run it once wherever the network allows, before
starting replicas; a replica never downloads anything itself.  It needs torch (the
``export`` extra) to download and to export; the classifier image has none, but its
``export`` build stage has it, and can fill a weights volume, a model-cache volume and a
repository volume that replicas mount::

    docker build -f Dockerfile.classifier --target export -t imgq-export .
    docker run --rm -v model-weights:/weights -v model-cache:/models \
        -v model-repository:/repository -e IMGQ_WEIGHTS_DIR=/weights \
        -e IMGQ_MODEL_CACHE=/models -e IMGQ_MODEL_DIR=/repository \
        -e IMGQ_TORCHVISION_MODELS=resnet18 imgq-export python -m classifier_service.prepare_models

Where there is no network, fetch the URLs it prints elsewhere and copy the files into the
weights folder by hand.  Exit status: 0 when every configured built-in is in the repository,
1 when any is missing.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from classifier_service import builtin_models
from classifier_service.settings import ClassifierSettings
from shared.config_reference import environment_help, parser_for
from shared.errors import ModelExportFailed, SettingsError
from shared.settings import VARIABLES, process_env


def prepare(names: tuple[str, ...], weights_dir: Path) -> list[str]:
    """Download what is missing; returns the names whose file is still missing."""
    if not names:
        return []
    # Imported here, not above: --help, and a configuration with nothing to download, need
    # no torch (the classifier image has none).
    import torch

    from classifier_service.torch_tools.torchvision_models import weights_file_name, weights_url

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
        [
            VARIABLES[name]
            for name in (
                "IMGQ_MODELS",
                "IMGQ_TORCHVISION_MODELS",
                "IMGQ_WEIGHTS_DIR",
                "IMGQ_MODEL_CACHE",
                "IMGQ_MODEL_DIR",
            )
        ],
        "It takes no arguments: it reads the classifier's settings, of which these matter:",
    )
    description = (
        "Download the weights files of the torchvision models a replica is configured to "
        "serve, where they are missing, then write the model repository folders of every "
        "configured built-in model (exported to ONNX first where the model cache lacks it). "
        "Exit status: 0 when every model is in the repository, 1 when any is missing, 2 for a "
        "bad setting."
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
    missing = prepare(settings.torchvision_models, settings.weights_dir)
    try:
        # Every configured built-in into the model repository (exported first where the
        # model cache lacks it), so replicas start by reading folders.
        builtin_models.ensure(settings)
    except (SettingsError, ModelExportFailed) as exc:
        print(exc, file=sys.stderr)
        return 1
    for name in builtin_models.configured(settings):
        place = builtin_models.folder(settings.model_dir, name)
        print(
            f"{name}: {place}"
            if builtin_models.present(settings.model_dir, name)
            else f"{name}: missing"
        )
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
