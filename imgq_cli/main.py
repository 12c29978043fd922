"""``imgq``: classify images, list models and check the service from a shell.

Exit codes: 0 success; 1 the server refused something or a job did not succeed; 2 the
server could not be reached (or the command line is wrong); 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from imgq.wire import ImageInput
from imgq_cli import render
from imgq_cli.client import ApiError, Client, Unreachable
from imgq_cli.waiting import wait_all
from shared.config_reference import package_version

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_WAIT_TIMEOUT = 300.0
MAX_TOP = 5
# Answers to a multipart upload that mean "this server has no upload endpoint" rather than
# "this upload is wrong": no route or method, the media type refused, or (imgq before uploads)
# the form read as a gallery submission whose 'image' field is missing.
_NO_UPLOAD_STATUSES = frozenset({404, 405, 415, 501})

Command = Callable[[Client, argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        client = Client(args.url, args.token or None)
    except ValueError as exc:
        _error(f"--url: {exc}")
        return 2
    command: Command = args.command
    try:
        return command(client, args)
    except Unreachable as exc:
        _error(str(exc))
        return 2
    except ApiError as exc:
        _error(exc.detail)
        return 1
    except KeyboardInterrupt:
        _error("interrupted")
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgq",
        description="Command-line client for the imgq image-classification service.",
        epilog="Exit codes: 0 ok, 1 refused by the server or a job did not succeed, "
        "2 server unreachable or bad usage.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    _add_connection_options(parser, top_level=True)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    # Options given after the command name win; those before it are the fallback.
    common = argparse.ArgumentParser(add_help=False)
    _add_connection_options(common, top_level=False)

    classify = commands.add_parser(
        "classify",
        parents=[common],
        help="classify gallery images or local image files",
        description="Submit one job per image: a PATH that is an existing file is uploaded, "
        "anything else names a gallery image on the server (see `imgq images`). Several "
        "images go in one request (POST /batches): all are accepted, or none.",
    )
    classify.add_argument("images", nargs="+", metavar="PATH_OR_GALLERY_NAME")
    classify.add_argument("-m", "--model", required=True, help="model name (see `imgq models`)")
    classify.add_argument(
        "--gallery",
        action="store_true",
        help="treat every argument as a gallery name, even where a local file has that name",
    )
    classify.add_argument(
        "--fresh",
        action="store_true",
        help="classify again even if the server already knows the answer for the same model "
        "and image bytes (sends Cache-Control: no-cache)",
    )
    _add_wait_options(classify)
    classify.set_defaults(command=cmd_classify)

    models = commands.add_parser("models", parents=[common], help="list the models on offer")
    models.set_defaults(command=cmd_models)

    images = commands.add_parser(
        "images", parents=[common], help="list the gallery images the server can classify"
    )
    images.set_defaults(command=cmd_images)

    status = commands.add_parser(
        "status",
        parents=[common],
        help="is the gateway ready, and how many replicas serve each model; or one job",
        description="Without JOB_ID: the gateway's readiness and the replicas online per model "
        "(exit 1 when not ready). With JOB_ID: that job.",
    )
    status.add_argument("job_id", nargs="?", metavar="JOB_ID")
    _add_wait_options(status)
    status.set_defaults(command=cmd_status)

    cancel = commands.add_parser(
        "cancel",
        parents=[common],
        help="cancel a queued job, or forget a finished one",
        description="A queued job becomes cancelled; a finished job's result is deleted on "
        "every gateway. A job that a replica has started cannot be cancelled (exit 1).",
    )
    cancel.add_argument("job_id", metavar="JOB_ID")
    cancel.set_defaults(command=cmd_cancel)
    return parser


def _add_connection_options(parser: argparse.ArgumentParser, *, top_level: bool) -> None:
    """The same options before and after the command name; only the top level has defaults,
    so that a command's parser leaves a value given before the command alone."""
    env_url = os.environ.get("IMGQ_URL") or DEFAULT_URL
    env_token = os.environ.get("IMGQ_TOKEN")
    parser.add_argument(
        "--url",
        default=env_url if top_level else argparse.SUPPRESS,
        help=f"gateway base URL (env IMGQ_URL, default {DEFAULT_URL})",
    )
    parser.add_argument(
        "--token",
        default=env_token if top_level else argparse.SUPPRESS,
        help="bearer token, when the server requires one (env IMGQ_TOKEN)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=False if top_level else argparse.SUPPRESS,
        help="print JSON on stdout instead of a table",
    )


def _add_wait_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-w", "--wait", action="store_true", help="wait until each job is final, then show results"
    )
    parser.add_argument(
        "--top", type=_top, default=1, metavar="N", help=f"labels shown per job (1-{MAX_TOP})"
    )
    parser.add_argument(
        "--timeout",
        type=_positive,
        default=DEFAULT_WAIT_TIMEOUT,
        metavar="SECONDS",
        help=f"longest --wait (default {DEFAULT_WAIT_TIMEOUT:g})",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress lines on stderr while waiting"
    )


def _top(raw: str) -> int:
    value = int(raw) if raw.isdigit() else 0
    if not 1 <= value <= MAX_TOP:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_TOP}")
    return value


def _positive(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


# -- commands -----------------------------------------------------------------------------


def cmd_classify(client: Client, args: argparse.Namespace) -> int:
    show = _progress_printer(args.wait and not args.quiet)
    jobs: list[dict[str, Any]] = []
    refused = False
    batch = _submit_batch(client, args) if len(args.images) > 1 else None
    if batch is not None:
        jobs = list(batch.get("jobs") or [])
        for job in jobs:
            show(job)
    for target in args.images if batch is None else ():
        try:
            job = _submit(client, args, target)
        except ApiError as exc:
            _error(exc.detail)
            refused = True
            continue
        jobs.append(job)
        show(job)
    if not jobs:
        return 1
    if not args.wait:
        _output(args, jobs, render.submitted_table(jobs))
        return 1 if refused else 0
    finished, problems = wait_all(
        client, jobs, timeout=args.timeout, max_wait=_max_wait(client), on_change=show
    )
    for problem in problems:
        _error(problem)
    _output(args, finished, render.jobs_table(finished, args.top))
    succeeded = all(job.get("status") == "succeeded" for job in finished)
    return 0 if succeeded and not refused and not problems else 1


def cmd_models(client: Client, args: argparse.Namespace) -> int:
    models = client.info().get("models") or []
    _output(args, models, render.models_table(models))
    return 0


def cmd_images(client: Client, args: argparse.Namespace) -> int:
    images = client.info().get("images") or []
    names = [str(image.get("name")) for image in images]
    _output(args, images, "\n".join(names))
    return 0


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    if args.job_id is not None:
        return _job_status(client, args)
    ready, reason = client.readiness()
    try:
        models: list[dict[str, Any]] | None = client.info().get("models") or []
    except ApiError as exc:
        models, reason = None, f"{reason}; /info: {exc.detail}"
    data = {"url": client.base_url, "ready": ready, "reason": reason, "models": models}
    _output(args, data, render.status_text(client.base_url, ready, reason, models))
    return 0 if ready else 1


def _job_status(client: Client, args: argparse.Namespace) -> int:
    job = client.job(args.job_id)
    if args.wait:
        show = _progress_printer(not args.quiet)
        [job], problems = wait_all(
            client, [job], timeout=args.timeout, max_wait=_max_wait(client), on_change=show
        )
        for problem in problems:
            _error(problem)
    _output(args, job, render.jobs_table([job], args.top))
    return 0 if job.get("status") == "succeeded" or not args.wait else 1


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    job = client.delete(args.job_id)
    if job is None:
        message = f"job {args.job_id} forgotten: its result is deleted"
        _output(args, {"job_id": args.job_id, "forgotten": True}, message)
    else:
        _output(args, job, render.jobs_table([job]))
    return 0


# -- helpers ------------------------------------------------------------------------------


def _submit_batch(client: Client, args: argparse.Namespace) -> dict[str, Any] | None:
    """Every image in one request (POST /batches): all accepted, or none, with the server's
    reason naming the image.  None from a server without batches: submit one by one."""
    images: list[ImageInput] = []
    for target in args.images:
        path = Path(target)
        if args.gallery or not path.is_file():
            images.append(target)
            continue
        try:
            images.append((path.name, path.read_bytes()))
        except OSError as exc:
            raise ApiError(0, "local_file", f"{target}: cannot read it: {exc.strerror}") from None
    try:
        return client.submit_batch(args.model, images, fresh=args.fresh)
    except ApiError as exc:
        if exc.status in (404, 405) and exc.code != "batch_not_found":
            return None  # an imgq gateway from before batches
        raise


def _submit(client: Client, args: argparse.Namespace, target: str) -> dict[str, Any]:
    """A gallery name is submitted by name; an existing local file is uploaded."""
    path = Path(target)
    if args.gallery or not path.is_file():
        return client.submit(args.model, target, fresh=args.fresh)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ApiError(0, "local_file", f"{target}: cannot read it: {exc.strerror}") from None
    try:
        return client.upload(args.model, path.name, data, fresh=args.fresh)
    except ApiError as exc:
        if exc.status in _NO_UPLOAD_STATUSES or (exc.status == 400 and "'image'" in exc.detail):
            raise ApiError(
                exc.status,
                exc.code,
                f"{target}: this server does not accept uploads yet (it answered "
                f"{exc.status}: {exc.detail}); name a gallery image instead, see `imgq images`",
            ) from None
        raise ApiError(exc.status, exc.code, f"{target}: {exc.detail}") from None


def _max_wait(client: Client) -> float:
    """The longest long-poll the server allows (``max_wait`` in /info)."""
    value = client.info().get("max_wait")
    return float(value) if isinstance(value, int | float) and value > 0 else 30.0


def _progress_printer(enabled: bool) -> Callable[[dict[str, Any]], None]:
    lock = threading.Lock()

    def show(job: dict[str, Any]) -> None:
        if enabled:
            with lock:
                print(render.progress(job), file=sys.stderr, flush=True)

    return show


def _output(args: argparse.Namespace, data: Any, text: str) -> None:
    print(render.to_json(data) if args.json else text, flush=True)


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
