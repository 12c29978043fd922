"""``imgq``: classify images (any number of them), follow batches, list models and check the
service from a shell.  Built on the ``imgq`` library alone.

Exit codes: 0 success; 1 the server refused something or a job did not succeed; 2 the
server could not be reached (or the command line is wrong); 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import imgq
from imgq import ApiError, Batch, Classification, Client, ImgqClientError, Job, Unreachable
from imgq.many import DEFAULT_IN_FLIGHT
from imgq_cli import render
from imgq_cli.inputs import InputError, Target, expand
from imgq_cli.progress import CLEAR_LINE, Progress
from imgq_cli.results import ResultsFile, error_of, record

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_WAIT_TIMEOUT = 300.0
MAX_TOP = 5
# Answers to a multipart upload that mean "this server has no upload endpoint" rather than
# "this upload is wrong": no route or method, the media type refused, or (imgq before uploads)
# the form read as a gallery submission whose 'image' field is missing.
_NO_UPLOAD_STATUSES = frozenset({404, 405, 415, 501})
# How often `imgq batch --wait` asks for news, so its progress line moves.
BATCH_PROGRESS_INTERVAL = 2.0

Command = Callable[[Client, argparse.Namespace], int]


class UsageError(Exception):
    """The command line names nothing that can be done (exit status 2)."""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        client = Client(args.url, args.token or None, max_retries=args.max_retries)
    except ValueError as exc:
        _error(f"--url: {exc}")
        return 2
    command: Command = args.command
    try:
        with client, _retry_notes(quiet=getattr(args, "quiet", False)):
            return command(client, args)
    except (UsageError, InputError) as exc:
        _error(str(exc))
        return 2
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
    parser.add_argument("--version", action="version", version=f"%(prog)s {imgq.__version__}")
    _add_connection_options(parser, top_level=True)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    # Options given after the command name win; those before it are the fallback.
    common = argparse.ArgumentParser(add_help=False)
    _add_connection_options(common, top_level=False)

    classify = commands.add_parser(
        "classify",
        parents=[common],
        help="classify images: files, directories, globs, a list on stdin, gallery names",
        description="Classify any number of images, one job each. IMAGE is a file (uploaded), "
        "a directory (its image files, recursively), a glob pattern, '-' (more IMAGE "
        "arguments on stdin, one a line), or else the name of a gallery image on the server "
        "(see `imgq images`). Images go in batches of what the server allows, a bounded "
        "number at a time; one the server refuses is reported and the others go on. "
        "The batch IDs are printed as they are created (follow one with `imgq batch ID`).",
    )
    classify.add_argument("images", nargs="+", metavar="IMAGE")
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
    classify.add_argument(
        "-o",
        "--out",
        type=Path,
        metavar="FILE",
        help="write each result as it arrives, one JSON object a line (CSV when FILE ends in "
        ".csv): image, job ID, model and version, status, labels, error. Implies --wait",
    )
    classify.add_argument(
        "--resume",
        action="store_true",
        help="with --out: keep FILE (else it is started anew) and skip the images it has",
    )
    classify.add_argument(
        "--max-in-flight",
        type=_count,
        default=DEFAULT_IN_FLIGHT,
        metavar="N",
        help=f"images submitted and not yet finished, at most (default {DEFAULT_IN_FLIGHT})",
    )
    _add_wait_options(classify, timeout_help="longest wait for a batch's jobs")
    classify.set_defaults(command=cmd_classify)

    batch = commands.add_parser(
        "batch",
        parents=[common],
        help="show a batch's jobs; --wait follows it until every job is final",
        description="The jobs of a batch that `imgq classify` (or POST /batches) created.",
    )
    batch.add_argument("batch_id", metavar="BATCH_ID")
    _add_wait_options(batch, timeout_help="longest --wait")
    batch.set_defaults(command=cmd_batch)

    models = commands.add_parser(
        "models", parents=[common], help="list the models on offer, with their versions"
    )
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
    _add_wait_options(status, timeout_help="longest --wait")
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
    default_retries = imgq.Retries().max_retries
    parser.add_argument(
        "--max-retries",
        type=_whole,
        default=default_retries if top_level else argparse.SUPPRESS,
        metavar="N",
        help="send a request again at most N times after 429, 503, a dropped connection or a "
        f"timeout, backing off (default {default_retries}: about 40 s)",
    )


def _add_wait_options(parser: argparse.ArgumentParser, *, timeout_help: str) -> None:
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
        help=f"{timeout_help} (default {DEFAULT_WAIT_TIMEOUT:g})",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress, batch IDs, retries or summary on stderr (errors still)",
    )


def _top(raw: str) -> int:
    value = int(raw) if raw.isdigit() else 0
    if not 1 <= value <= MAX_TOP:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_TOP}")
    return value


def _whole(raw: str) -> int:
    if not raw.isdigit():
        raise argparse.ArgumentTypeError("must be a whole number (0 or more)")
    return int(raw)


def _count(raw: str) -> int:
    if not raw.isdigit() or int(raw) < 1:
        raise argparse.ArgumentTypeError("must be a whole number, 1 or more")
    return int(raw)


def _positive(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


# -- classify -------------------------------------------------------------------------------


def cmd_classify(client: Client, args: argparse.Namespace) -> int:
    if args.resume and args.out is None:
        raise UsageError("--resume needs --out FILE (the results to resume)")
    targets = expand(args.images, gallery=args.gallery, stdin=sys.stdin)
    if not targets:
        raise UsageError("no images to classify")
    if args.out is not None:
        return _classify_to_file(client, args, targets, args.out)
    if not args.wait and len(targets) == 1:
        return _submit_one(client, args, targets[0])
    progress = _progress(args, total=len(targets))
    finished: dict[int, Classification] = {}
    for result in _classify(client, args, targets, progress):
        finished[result.index] = result
    jobs = [finished[i].job for i in range(len(targets)) if finished[i].job is not None]
    data = [job.raw for job in jobs if job is not None]
    if args.wait:
        _summary(progress, args, skipped=0)
        _output(args, data, render.jobs_table(data, args.top))
    elif data:
        _output(args, data, render.submitted_table(data))
    return 0 if progress.failed == 0 else 1


def _classify_to_file(
    client: Client, args: argparse.Namespace, targets: list[Target], path: Path
) -> int:
    out = ResultsFile(path, resume=args.resume)
    try:
        todo = [t for t in targets if t.name not in out.done]
        earlier = [out.done[t.name] for t in targets if t.name in out.done]
        progress = _progress(args, total=len(todo))
        for result in _classify(client, args, todo, progress):
            out.write(record(todo[result.index].name, args.model, result, args.timeout))
    finally:
        out.close()
    _summary(progress, args, skipped=len(earlier), path=path)
    return 0 if progress.failed == 0 and all(s == "succeeded" for s in earlier) else 1


def _classify(
    client: Client, args: argparse.Namespace, targets: list[Target], progress: Progress
) -> Iterator[Classification]:
    """Each image's outcome as its job finishes (with --wait or --out), or as it was
    accepted; reports failures and progress as they come."""
    follow = args.wait or args.out is not None

    def created(batch: Batch) -> None:
        progress.note(f"batch {batch.batch_id}: {_images(len(batch.jobs))}")

    results = client.classify_many(
        [t.image for t in targets],
        args.model,
        fresh=args.fresh,
        max_in_flight=args.max_in_flight,
        timeout=args.timeout if follow else 0.0,
        on_batch=created,
    )
    try:
        for result in results:
            ok = result.ok if follow else result.job is not None
            if not ok:
                progress.note(f"error: {_why(targets[result.index], result)}", always=True)
            progress.finished_one(ok)
            yield result
    finally:
        progress.close()


def _why(target: Target, result: Classification) -> str:
    if result.error is not None:
        return _refusal(target, result.error)
    error = error_of(result, None)
    reason = f"{error['code']}: {error['message']}" if error else result.status
    return f"{target.name}: {reason}"


def _refusal(target: Target, error: ImgqClientError) -> str:
    """What to say about an image the server refused (or that could not be read)."""
    if not isinstance(error, ApiError):
        return str(error)
    if not target.is_file:
        return error.detail  # the server's words name the gallery image
    if error.status in _NO_UPLOAD_STATUSES or (error.status == 400 and "'image'" in error.detail):
        return (
            f"{target.name}: this server does not accept uploads yet (it answered "
            f"{error.status}: {error.detail}); name a gallery image instead, see `imgq images`"
        )
    return f"{target.name}: {error.detail}"


def _submit_one(client: Client, args: argparse.Namespace, target: Target) -> int:
    """One image, not waited for: one request, nothing else asked of the server."""
    try:
        job = client.submit(args.model, target.image, fresh=args.fresh)
    except ApiError as exc:
        _error(_refusal(target, exc))
        return 1
    except imgq.ImageReadError as exc:
        _error(str(exc))
        return 1
    _output(args, [job.raw], render.submitted_table([job.raw]))
    return 0


def _summary(
    progress: Progress, args: argparse.Namespace, *, skipped: int, path: Path | None = None
) -> None:
    if args.quiet:
        return
    seconds = progress.elapsed
    text = (
        f"{_images(progress.done)}: {progress.succeeded} succeeded, {progress.failed} failed "
        f"in {seconds:.1f} s ({progress.rate():.1f} jobs/s)"
    )
    if skipped:
        text += f"; {skipped} skipped, already in {path}"
    progress.note(text)


def _progress(args: argparse.Namespace, *, total: int) -> Progress:
    return Progress(total, sys.stderr, tty=sys.stderr.isatty(), enabled=not args.quiet)


# -- the other commands -------------------------------------------------------------------


def cmd_batch(client: Client, args: argparse.Namespace) -> int:
    batch = client.get_batch(args.batch_id)
    if args.wait and not batch.done:
        progress = _progress(args, total=len(batch.jobs) + len(batch.gone))

        def show(current: Batch) -> None:
            succeeded = sum(1 for job in current.jobs if _succeeded(job))
            failed = sum(1 for job in current.jobs if job.is_final and not _succeeded(job))
            progress.set(succeeded, failed)

        try:
            batch = client.wait_batch(
                args.batch_id,
                args.timeout,
                on_change=show,
                interval=BATCH_PROGRESS_INTERVAL,
            )
        finally:
            progress.close()
        if not batch.done:
            _error(f"batch {args.batch_id} is not done after {args.timeout:g} s")
    data = [job.raw for job in batch.jobs]
    table = render.jobs_table(data, args.top) if args.wait else render.submitted_table(data)
    _output(args, batch.raw, table)
    for job_id in batch.gone:
        _error(f"job {job_id} of the batch is gone (deleted, or past the retention time)")
    if not args.wait:
        return 0
    return 0 if batch.done and not batch.gone and all(_succeeded(j) for j in batch.jobs) else 1


def cmd_models(client: Client, args: argparse.Namespace) -> int:
    models = client.info().raw.get("models") or []
    _output(args, models, render.models_table(models))
    return 0


def cmd_images(client: Client, args: argparse.Namespace) -> int:
    images = client.info().raw.get("images") or []
    names = [str(image.get("name")) for image in images]
    _output(args, images, "\n".join(names))
    return 0


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    if args.job_id is not None:
        return _job_status(client, args)
    ready, reason = client.ready()
    try:
        models: list[dict[str, Any]] | None = client.info().raw.get("models") or []
    except ApiError as exc:
        models, reason = None, f"{reason}; /info: {exc.detail}"
    data = {"url": client.base_url, "ready": ready, "reason": reason, "models": models}
    _output(args, data, render.status_text(client.base_url, ready, reason, models))
    return 0 if ready else 1


def _job_status(client: Client, args: argparse.Namespace) -> int:
    if not args.wait:
        job = client.get(args.job_id)
        _output(args, job.raw, render.jobs_table([job.raw], args.top))
        return 0

    def show(job: Job) -> None:
        if not args.quiet:
            print(render.progress(job.raw), file=sys.stderr, flush=True)

    job = client.wait(args.job_id, args.timeout, on_change=show)
    if not job.is_final:
        _error(f"job {job.job_id} ({job.image}) is still {job.status} after {args.timeout:g} s")
    _output(args, job.raw, render.jobs_table([job.raw], args.top))
    return 0 if _succeeded(job) else 1


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    job = client.cancel(args.job_id)
    if job is None:
        message = f"job {args.job_id} forgotten: its result is deleted"
        _output(args, {"job_id": args.job_id, "forgotten": True}, message)
    else:
        _output(args, job.raw, render.jobs_table([job.raw]))
    return 0


# -- helpers ------------------------------------------------------------------------------


def _images(count: int) -> str:
    return f"{count} image" if count == 1 else f"{count} images"


def _succeeded(job: Job) -> bool:
    return job.status == "succeeded"


@contextmanager
def _retry_notes(*, quiet: bool) -> Iterator[None]:
    """The library says when it sends a request again (logger ``imgq``, INFO): shown on
    stderr, so a long wait for a restarting gateway is not silence.  On a terminal each
    note first clears the progress line, which the next update draws again."""
    logger = logging.getLogger("imgq")
    handler = logging.StreamHandler(sys.stderr)
    clear = CLEAR_LINE if sys.stderr.isatty() else ""
    handler.setFormatter(logging.Formatter(clear + "imgq: %(message)s"))
    handler.setLevel(logging.INFO)
    level = logger.level
    if not quiet:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _output(args: argparse.Namespace, data: Any, text: str) -> None:
    print(render.to_json(data) if args.json else text, flush=True)


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
