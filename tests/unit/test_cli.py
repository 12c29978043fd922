"""The ``imgq`` command line without a service: against a scripted fake server (the wire
details: long-poll parameters, uploads, tokens, error answers, --out and --resume), its
inputs, progress and renderer (against the running service: tests/service/test_cli.py)."""

from __future__ import annotations

import csv
import io
import json
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from imgq_cli import render
from imgq_cli.inputs import InputError, expand
from imgq_cli.main import main
from imgq_cli.progress import CLEAR_LINE, Progress, duration
from tests.cli_runs import run
from tests.conftest import REPO
from tests.noise_images import small_jpegs

MODEL = "efficientnet_lite0"


def test_an_unreachable_server_exits_2_naming_the_url(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "classify", "cat.jpg", "-m", MODEL, "--url", "http://127.0.0.1:1", "--max-retries",
        "0",
    )  # fmt: skip
    assert code == 2
    assert out == ""
    assert err.startswith("error: cannot reach the imgq server at http://127.0.0.1:1: ")
    assert "connection refused" in err
    assert "Traceback" not in err

    code, _, err = run(capsys, "models", "--url", "ftp://example.org")
    assert code == 2
    assert "--url" in err


def test_url_and_token_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IMGQ_URL", "http://127.0.0.1:1")
    code, _, err = run(capsys, "models", "--max-retries", "0")
    assert code == 2
    assert "http://127.0.0.1:1" in err


class FakeGateway:
    """Answers like a gateway would, and records what it was asked."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.statuses = ["queued", "started", "succeeded"]
        self.uploads = False
        # With batches: POST /batches answers every job final at once (an upload whose
        # file name starts with "bad" failed), and names the images in `batched`.
        self.batches = False
        self.batched: list[str] = []

    def job(self, status: str) -> dict[str, Any]:
        done = status == "succeeded"
        return {
            "job_id": "ab" * 16,
            "status": status,
            "model": MODEL,
            "image": "cat.jpg",
            "result": [{"label": "tabby", "class_index": 281, "score": 0.5}] if done else None,
            "error": None,
            "queued_at": 1.0,
            "started_at": 2.0 if status != "queued" else None,
            "finished_at": 3.0 if done else None,
            "replica": "replica-9" if status != "queued" else None,
        }

    def answer(self, method: str, path: str, headers: Any, body: bytes) -> tuple[int, Any]:
        url = urllib.parse.urlsplit(path)
        query = dict(urllib.parse.parse_qsl(url.query))
        self.requests.append(
            {"method": method, "path": url.path, "query": query, "headers": headers, "body": body}
        )
        if url.path == "/info":
            return 200, {"models": [], "images": [], "max_wait": 7}
        if method == "POST" and url.path == "/batches" and self.batches:
            return 202, self.batch(headers, body)
        if method == "POST" and url.path == "/classifications":
            if headers.get_content_type() == "multipart/form-data" and not self.uploads:
                return 400, {"detail": "field 'image' is required and must be a string"}
            return 202, self.job("queued")
        if url.path == "/classifications/" + "ab" * 16:
            since = query.get("since")
            current = self.statuses.index(since) + 1 if since else 0
            return 200, self.job(self.statuses[current])
        return 404, {"detail": f"Not Found: {url.path}", "code": "not_found"}

    def batch(self, headers: Any, body: bytes) -> dict[str, Any]:
        form = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + headers["Content-Type"].encode() + b"\r\n\r\n" + body
        )
        names = [
            f"upload:{part.get_filename()}" if part.get_filename() else part.get_content()
            for part in form.iter_parts()
            if part.get_param("name", header="content-disposition") in ("file", "image")
        ]
        jobs = []
        for name in names:
            self.batched.append(name)
            job = self.job("succeeded")
            job.update(job_id=f"{len(self.batched):032x}", image=name)
            if name.startswith("upload:bad"):
                job.update(status="failed", result=None)
                job["error"] = {"code": "image_decode_failed", "message": "cannot decode image"}
            jobs.append(job)
        return {"batch_id": "f" * 32, "model": MODEL, "jobs": jobs, "done": True, "gone": []}


@pytest.fixture
def fake() -> Iterator[tuple[FakeGateway, str]]:
    gateway = FakeGateway()

    class Handler(BaseHTTPRequestHandler):
        def handle_any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            status, payload = gateway.answer(self.command, self.path, self.headers, body)
            raw = json.dumps(payload).encode()
            self.send_response(status)
            kind = "application/json" if status < 400 else "application/problem+json"
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_POST = do_DELETE = handle_any

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield gateway, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_wait_long_polls_with_since_and_shows_each_change(
    fake: tuple[FakeGateway, str], capsys: pytest.CaptureFixture[str]
) -> None:
    gateway, url = fake
    code, out, err = run(capsys, "classify", "cat.jpg", "-m", MODEL, "--wait", "--url", url)
    assert code == 0
    assert out.splitlines()[1].split() == ["cat.jpg", MODEL, "succeeded", "0.500", "tabby"]
    assert err.startswith("1 image: 1 succeeded, 0 failed in "), err
    polls = [r["query"] for r in gateway.requests if r["path"].startswith("/classifications/")]
    # The server's max_wait (7 s from /info) bounds each long-poll.
    assert polls == [{"wait": "7", "since": "queued"}, {"wait": "7", "since": "started"}]
    submit = next(r for r in gateway.requests if r["method"] == "POST")
    assert json.loads(submit["body"]) == {"model": MODEL, "image": "cat.jpg"}
    assert submit["headers"]["Content-Type"] == "application/json"
    assert "Authorization" not in submit["headers"]


def test_token_is_sent_as_a_bearer_header(
    fake: tuple[FakeGateway, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gateway, url = fake
    assert (
        run(capsys, "classify", "cat.jpg", "-m", MODEL, "--url", url, "--token", "s3cret")[0] == 0
    )
    monkeypatch.setenv("IMGQ_TOKEN", "from-env")
    assert run(capsys, "models", "--url", url)[0] == 0
    assert [r["headers"]["Authorization"] for r in gateway.requests] == [
        "Bearer s3cret",
        "Bearer from-env",
    ]


def test_a_local_file_goes_up_as_multipart_model_and_file(
    fake: tuple[FakeGateway, str], capsys: pytest.CaptureFixture[str]
) -> None:
    gateway, url = fake
    image = REPO / "images" / "cat.jpg"
    code, out, err = run(capsys, "classify", str(image), "-m", MODEL, "--url", url)
    assert code == 1
    assert out == ""
    assert err == (
        f"error: {image}: this server does not accept uploads yet (it answered 400: field "
        "'image' is required and must be a string); name a gallery image instead, "
        "see `imgq images`\n"
    )

    gateway.uploads = True
    code, out, _ = run(capsys, "classify", str(image), "-m", MODEL, "--json", "--url", url)
    assert code == 0
    assert json.loads(out)[0]["status"] == "queued"
    post = gateway.requests[-1]
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + post["headers"]["Content-Type"].encode() + b"\r\n\r\n" + post["body"]
    )
    parts = {
        part.get_param("name", header="content-disposition"): part for part in message.iter_parts()
    }
    assert set(parts) == {"model", "file"}
    assert parts["model"].get_content() == MODEL
    assert parts["file"].get_filename() == "cat.jpg"
    assert parts["file"].get_content_type() == "image/jpeg"
    assert parts["file"].get_content() == image.read_bytes()


def test_several_images_use_one_batch_request_or_fall_back_to_one_each(
    fake: tuple[FakeGateway, str], capsys: pytest.CaptureFixture[str]
) -> None:
    gateway, url = fake
    # This fake has no /batches (an older gateway): one request per image.
    assert run(capsys, "classify", "cat.jpg", "coffee.jpg", "-m", MODEL, "--url", url)[0] == 0
    posts = [(r["path"], json.loads(r["body"])) for r in gateway.requests if r["method"] == "POST"]
    assert posts == [
        ("/batches", {"model": MODEL, "images": ["cat.jpg", "coffee.jpg"]}),
        ("/classifications", {"model": MODEL, "image": "cat.jpg"}),
        ("/classifications", {"model": MODEL, "image": "coffee.jpg"}),
    ]
    # Every submission carries an idempotency key: a retried one returns its jobs.
    keys = [r["headers"]["Idempotency-Key"] for r in gateway.requests if r["method"] == "POST"]
    assert len(set(keys)) == 3


def test_gallery_flag_sends_a_name_even_where_a_file_has_it(
    fake: tuple[FakeGateway, str], capsys: pytest.CaptureFixture[str]
) -> None:
    gateway, url = fake
    image = str(REPO / "images" / "cat.jpg")
    assert run(capsys, "classify", image, "--gallery", "-m", MODEL, "--url", url)[0] == 0
    assert json.loads(gateway.requests[-1]["body"]) == {"model": MODEL, "image": image}


def test_an_error_that_is_not_a_problem_document_shows_the_status(
    fake: tuple[FakeGateway, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, url = fake
    code, _, err = run(capsys, "status", "cd" * 16, "--url", url)
    assert code == 1
    assert err == f"error: Not Found: /classifications/{'cd' * 16}\n"


def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["classify", "cat.jpg"], ["classify", "-m", MODEL, "cat.jpg", "--top", "9"], []):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    assert "usage: imgq" in capsys.readouterr().err


def _photos(folder: Path, names: list[str]) -> list[Path]:
    paths = []
    for name, data in zip(names, small_jpegs(len(names), seed=90), strict=True):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths.append(path)
    return paths


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_out_has_one_line_per_image_and_resume_submits_nothing(
    fake: tuple[FakeGateway, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    gateway, url = fake
    gateway.batches = True
    folder = tmp_path / "photos"
    _photos(folder, ["a.jpg", "b.JPEG", "sub/c.png", "sub/deeper/d.webp", ".hidden/e.jpg"])
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "results.jsonl"
    code, stdout, err = run(capsys, "classify", str(folder), "-m", MODEL, "--out", str(out),
                            "--url", url)  # fmt: skip
    assert code == 0, err
    assert stdout == ""
    records = _records(out)
    found = [str(folder / n) for n in ("a.jpg", "b.JPEG", "sub/c.png", "sub/deeper/d.webp")]
    assert sorted(r["image"] for r in records) == sorted(found)
    assert set(records[0]) == {"image", "job_id", "model", "model_version", "status", "labels",
                               "error"}  # fmt: skip
    assert all(r["status"] == "succeeded" and r["error"] is None for r in records)
    assert records[0]["labels"] == [{"label": "tabby", "score": 0.5}]
    assert records[0]["model_version"] is None  # until the server says which version ran
    assert "4 images: 4 succeeded, 0 failed" in err

    # A run stopped while writing left half a line: --resume drops it, skips the rest.
    with out.open("a") as f:
        f.write('{"image": "half')
    posts = len([r for r in gateway.requests if r["method"] == "POST"])
    code, _, err = run(capsys, "classify", str(folder), "-m", MODEL, "--out", str(out),
                       "--resume", "--url", url)  # fmt: skip
    assert code == 0, err
    assert len([r for r in gateway.requests if r["method"] == "POST"]) == posts
    assert _records(out) == records
    assert "4 skipped, already in" in err


def test_out_csv_failures_and_exit_status(
    fake: tuple[FakeGateway, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    gateway, url = fake
    gateway.batches = True
    paths = _photos(tmp_path, ["ok1.jpg", "bad.jpg", "ok2.jpg"])
    out = tmp_path / "results.csv"
    code, _, err = run(capsys, "classify", *map(str, paths), "-m", MODEL, "-o", str(out), "-q",
                       "--url", url)  # fmt: skip
    assert code == 1
    assert err == f"error: {paths[1]}: image_decode_failed: cannot decode image\n"  # -q: no more
    rows = list(csv.DictReader(out.open()))
    assert [r["image"] for r in rows] == [str(p) for p in paths]  # one batch: in order
    assert rows[0]["label"] == "tabby"
    assert rows[0]["labels"] == "tabby (0.5000)"
    assert (rows[1]["status"], rows[1]["error"]) == (
        "failed",
        "image_decode_failed: cannot decode image",
    )
    # Resumed, the failure stays in the file: the exit status still says so.
    code, _, _ = run(capsys, "classify", *map(str, paths), "-m", MODEL, "-o", str(out),
                     "--resume", "-q", "--url", url)  # fmt: skip
    assert code == 1
    assert len(list(csv.DictReader(out.open()))) == 3


def test_arguments_expand_to_files_globs_stdin_and_gallery_names(tmp_path: Path) -> None:
    paths = _photos(tmp_path, ["x/1.jpg", "x/2.png", "y/3.jpg"])
    (tmp_path / "x" / "readme.md").write_text("no")
    targets = expand(
        [str(tmp_path / "x" / "*"), "-", str(paths[0]), "coffee.jpg"], gallery=False,
        stdin=io.StringIO(f"{paths[2]}\n\ncat.jpg\n"),
    )  # fmt: skip
    assert [t.name for t in targets] == [
        str(paths[0]), str(paths[1]), str(paths[2]), "cat.jpg", "coffee.jpg"
    ]  # fmt: skip
    assert [t.is_file for t in targets] == [True, True, True, False, False]
    with pytest.raises(InputError, match="matches no image file"):
        expand([str(tmp_path / "*.gif")], gallery=False, stdin=io.StringIO())
    assert expand([str(paths[0])], gallery=True, stdin=io.StringIO())[0].image == str(paths[0])


def test_a_pattern_matching_nothing_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(capsys, "classify", str(tmp_path / "*.jpg"), "-m", MODEL)
    assert code == 2
    assert err == f"error: {tmp_path / '*.jpg'}: matches no image file\n"
    code, _, err = run(capsys, "classify", "cat.jpg", "-m", MODEL, "--resume")
    assert code == 2
    assert "--resume needs --out" in err


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_on_a_terminal_updates_one_line_in_place() -> None:
    clock, stream = Clock(), io.StringIO()
    progress = Progress(4, stream, tty=True, clock=clock)
    clock.now += 1
    progress.finished_one(True)
    clock.now += 1
    progress.finished_one(False)
    progress.note("batch x: 2 images")
    clock.now += 0.01  # sooner than a redraw is worth
    progress.finished_one(True)
    progress.close()
    assert stream.getvalue() == (
        f"{CLEAR_LINE}1/4 done, 0 failed, 1.0 jobs/s, ETA 0:03"
        f"{CLEAR_LINE}2/4 done, 1 failed, 1.0 jobs/s, ETA 0:02"
        f"{CLEAR_LINE}batch x: 2 images\n2/4 done, 1 failed, 1.0 jobs/s, ETA 0:02\n"
    )


def test_progress_elsewhere_is_a_plain_line_every_few_seconds() -> None:
    clock, stream = Clock(), io.StringIO()
    progress = Progress(100, stream, tty=False, clock=clock)
    for _ in range(30):
        clock.now += 0.5
        progress.finished_one(True)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines == [
        f"{n}/100 done, 0 failed, 2.0 jobs/s, ETA {duration((100 - n) / 2)}" for n in (10, 20, 30)
    ]
    quiet = io.StringIO()
    silent = Progress(1, quiet, tty=True, enabled=False, clock=clock)
    silent.finished_one(True)
    silent.note("batch")
    silent.note("error: shown anyway", always=True)
    assert quiet.getvalue() == "error: shown anyway\n"


def _job(image: str, status: str, labels: list[tuple[str, float]] | None = None) -> dict[str, Any]:
    return {
        "job_id": "0123456789abcdef" * 2,
        "status": status,
        "model": MODEL,
        "image": image,
        "result": None
        if labels is None
        else [{"label": name, "class_index": i, "score": s} for i, (name, s) in enumerate(labels)],
        "error": {"code": "image_decode_failed", "message": "cannot decode image"}
        if status == "failed"
        else None,
    }


def test_table_pads_columns_and_aligns_numbers_right() -> None:
    text = render.table(["A", "NUM"], [["long cell", "1"], ["x", "12.5"]], frozenset({1}))
    assert text.splitlines() == ["A           NUM", "long cell     1", "x          12.5"]
    assert render.table(["A", "B"], [["x", ""]]) == "A  B\nx"  # no trailing spaces


def test_jobs_table_shows_the_best_label_or_the_error() -> None:
    jobs = [
        _job("coffee.jpg", "succeeded", [("espresso", 0.955), ("cup", 0.012)]),
        _job("notes.txt", "failed"),
        _job("cat.jpg", "started"),
    ]
    assert render.jobs_table(jobs).splitlines() == [
        "IMAGE       MODEL               STATUS     SCORE  LABEL",
        "coffee.jpg  efficientnet_lite0  succeeded  0.955  espresso",
        "notes.txt   efficientnet_lite0  failed            "
        "image_decode_failed: cannot decode image",
        "cat.jpg     efficientnet_lite0  started           -",
    ]


def test_jobs_table_with_top_ranks_the_labels() -> None:
    labels = [("espresso", 0.9), ("cup", 0.05), ("consomme", 0.01)]
    lines = render.jobs_table([_job("coffee.jpg", "succeeded", labels)], top=2).splitlines()
    assert lines == [
        "IMAGE       MODEL               STATUS     #  SCORE  LABEL",
        "coffee.jpg  efficientnet_lite0  succeeded  1  0.900  espresso",
        "                                           2  0.050  cup",
    ]
    failed = render.jobs_table([_job("x.jpg", "failed")], top=5).splitlines()
    assert failed[1].endswith("failed            image_decode_failed: cannot decode image")


def test_models_and_status_text() -> None:
    models = [
        {"name": "efficientnet_lite0", "title": "EfficientNet-Lite0", "input_size": 224,
         "online": True, "replicas": 2},
        {"name": "efficientnet_lite2", "title": "EfficientNet-Lite2", "input_size": 260,
         "online": False, "replicas": 0},
    ]  # fmt: skip
    models[0] |= {
        "version": "1",
        "versions": [
            {"id": "efficientnet_lite0@1", "version": "1"},
            {"id": "efficientnet_lite0@2", "version": "2"},
        ],
    }
    assert render.models_table(models).splitlines() == [
        "MODEL               TITLE               INPUT  REPLICAS  VERSIONS",
        "efficientnet_lite0  EfficientNet-Lite0    224         2  1 (default), 2",
        "efficientnet_lite2  EfficientNet-Lite2    260         0  -",
    ]
    assert render.status_text("http://h:1", False, "still replaying", models).splitlines() == [
        "gateway http://h:1: NOT READY (still replaying)",
        "",
        "MODEL               REPLICAS  STATE",
        "efficientnet_lite0         2  online",
        "efficientnet_lite2         0  offline",
    ]


def test_progress_lines() -> None:
    assert render.progress(_job("cat.jpg", "queued")) == "cat.jpg [01234567] queued"
    started = {**_job("cat.jpg", "started"), "replica": "replica-1"}
    assert render.progress(started) == "cat.jpg [01234567] started on replica-1"
    done = _job("cat.jpg", "succeeded", [("tabby", 0.5)])
    assert render.progress(done) == "cat.jpg [01234567] succeeded: tabby 0.500"
    reused = render.progress({**done, "reused_from": "f" * 32})
    assert reused.endswith("tabby 0.500 (an earlier result for the same image bytes)")
    failed = render.progress(_job("x", "failed"))
    assert failed == "x [01234567] failed: image_decode_failed: cannot decode image"
