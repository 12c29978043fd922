"""The benchmark's pure parts: percentiles, the Markdown table, targets, labels, scoring."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from bench.accuracy import score
from bench.load import LoadResult, replica_gaps
from bench.photos import LabelsError, image_files, read_labels
from bench.precision import PrecisionResult
from bench.report import Row, Target, escape, markdown_table, results_table
from bench.stats import Latency, percentile, rate
from bench.summary import added_latency_ms
from tests.api import REPO


@pytest.mark.parametrize(
    ("q", "expected"),
    [(0, 1.0), (25, 1.75), (50, 2.5), (95, 3.85), (100, 4.0)],
)
def test_percentile_interpolates_between_ranks(q: float, expected: float) -> None:
    # numpy's default ("linear") gives the same figures for [1, 2, 3, 4].
    assert percentile([4.0, 1.0, 3.0, 2.0], q) == pytest.approx(expected)


def test_percentile_of_one_value_is_that_value() -> None:
    assert percentile([7.0], 0) == percentile([7.0], 99) == 7.0


@pytest.mark.parametrize("q", [-1, 101, float("nan")])
def test_percentile_rejects_a_bad_rank(q: float) -> None:
    with pytest.raises(ValueError, match=r"0\.\.100"):
        percentile([1.0], q)


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_latency_summary_is_in_milliseconds() -> None:
    latency = Latency.of_seconds([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert latency.count == 100
    assert latency.p50 == pytest.approx(50.5)
    assert latency.p99 == pytest.approx(99.01)
    assert str(latency) == "50 / 95 / 99"


def test_rate_of_an_untimed_run_is_zero() -> None:
    assert rate(10, 0.0) == 0.0
    assert rate(10, 2.0) == 5.0


def test_markdown_table_has_a_header_rule_and_one_line_per_row() -> None:
    table = markdown_table(("a", "b"), [("1", "2"), ("3", "4")])
    assert table == "| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |\n"


def test_markdown_cells_cannot_break_the_table() -> None:
    assert escape("a|b\nc") == "a\\|b c"
    table = markdown_table(("x",), [("p|q",)])
    assert table.splitlines()[2] == "| p\\|q |"


def test_markdown_table_refuses_a_row_of_the_wrong_width() -> None:
    with pytest.raises(ValueError, match="cells"):
        markdown_table(("a", "b"), [("1",)])


@pytest.mark.parametrize(
    ("target", "value", "met"),
    [
        (Target(">=", 0.9), 0.9, True),
        (Target(">=", 0.9), 0.89, False),
        (Target("<=", 5), 5.0, True),
        (Target("<", 200), 200.0, False),
        (Target("<", 200), 199.9, True),
        (Target(">=", 1.5), None, None),
    ],
)
def test_targets_compare_the_measured_value(target: Target, value: float | None, met: bool) -> None:
    assert target.check(value) is met


def test_target_reads_as_its_bound() -> None:
    assert str(Target(">=", 0.9, " × bare")) == "≥ 0.9 × bare"
    assert str(Target("<", 200, " MB")) == "< 200 MB"
    with pytest.raises(ValueError, match="operator"):
        Target("~", 1)


def test_rows_say_met_not_met_or_not_measured() -> None:
    target = Target(">=", 2000, "/s")
    rows = [
        Row("submissions", "64 clients", "2500/s", target=target, value=2500),
        Row("submissions", "64 clients", "900/s", target=target, value=900),
        Row("submissions", "64 clients", "—", target=target),
        Row("accuracy", "100 photos", "top-1 0.89"),
    ]
    lines = results_table(rows).splitlines()[2:]
    assert lines[0].endswith("| ≥ 2000/s | met |")
    assert lines[1].endswith("| ≥ 2000/s | **not met** |")
    assert lines[2].endswith("| ≥ 2000/s | not measured |")
    assert lines[3].endswith("|  |  |")


def test_a_verdict_on_a_busy_machine_says_so() -> None:
    row = Row("e2e", "2 replicas", "50 jobs/s", target=Target(">=", 0.9), value=0.8, caveat="busy")
    assert row.cells()[-1] == "**not met** (busy)"


def test_added_latency_is_per_photo() -> None:
    result = LoadResult(jobs=2, per_image=[("a.jpg", 0.040), ("b.jpg", 0.100), ("c.jpg", 1.0)])
    # c.jpg has no bare-model time, so it cannot be compared and is left out.
    assert added_latency_ms(result, {"a.jpg": 35.0, "b.jpg": 90.0}) == pytest.approx([5.0, 10.0])


def test_replica_gaps_are_per_replica_and_per_batch() -> None:
    spans = [
        ("r1", 0.0, 0.030),
        ("r1", 0.0, 0.030),  # the same batch as the line above: one span
        ("r1", 0.034, 0.064),
        ("r2", 0.010, 0.040),
        ("r2", 5.0, 5.030),  # idle for seconds: no work was waiting, not overhead
    ]
    assert sorted(replica_gaps(spans)) == pytest.approx([0.004])


def _labels(folder: Path, text: str, photos: tuple[str, ...] = ("a.JPEG", "b.JPEG")) -> Path:
    for name in photos:
        (folder / name).write_bytes(b"")
    (folder / "labels.csv").write_text(text)
    return folder


def test_labels_map_each_present_photo_to_its_class(tmp_path: Path) -> None:
    folder = _labels(
        tmp_path, "file,class_index,wnid\na.JPEG,0,n1\nb.JPEG,999,n2\ngone.JPEG,5,n3\n"
    )
    assert read_labels(folder) == {"a.JPEG": 0, "b.JPEG": 999}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file,wnid\na.JPEG,n1\n", "lacks the column"),
        ("file,class_index\na.JPEG,tench\n", "class_index 'tench'"),
        ("file,class_index\na.JPEG,1000\n", r"not in 0\.\.999"),
        ("file,class_index\n../a.JPEG,1\n", "not a plain file name"),
        ("file,class_index\nnone.JPEG,1\n", "names no photo"),
    ],
)
def test_bad_labels_are_reported_with_the_reason(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(LabelsError, match=message):
        read_labels(_labels(tmp_path, text))


def test_a_folder_without_labels_says_what_it_needs(tmp_path: Path) -> None:
    with pytest.raises(LabelsError, match=r"labels\.csv with the columns file,class_index"):
        read_labels(tmp_path)


def test_image_files_picks_photos_by_suffix(tmp_path: Path) -> None:
    for name in ("b.JPEG", "a.png", "c.webp", "labels.csv", "README.md"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in image_files(tmp_path)] == ["a.png", "b.JPEG", "c.webp"]


def test_accuracy_counts_top1_and_top5_and_failed_photos_as_misses() -> None:
    labels = {"a": 1, "b": 2, "c": 3, "d": 4}
    predictions = {"a": [1, 9, 9, 9, 9], "b": [9, 2, 9, 9, 9], "c": [9, 9, 9, 9, 9, 3]}
    result = score("m", predictions, labels)
    assert (result.top1, result.top5, result.failed, result.photos) == (0.25, 0.5, 1, 4)


def test_the_benchmark_parent_never_imports_torch() -> None:
    # It starts subprocesses and must never fork with torch loaded (forked children hung).
    code = "import sys, bench.__main__; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def test_plumbing_is_service_cpu_per_job_less_the_model() -> None:
    from bench import summary
    from bench.suite import Measurements

    m = Measurements()
    m.bare[2] = 100.0  # 2 processes x 1 thread (on 2 cores): 20 core-ms per image
    m.cpu_per_job["HTTP, 2"] = {
        "replicas": 22.0,
        "gateway": 1.5,
        "broker": 1.0,
        "load generator": 3.0,
    }
    expected_model = 1000 * 2 * summary.threads_per_replica(2) / 100.0
    assert summary.model_core_ms(m, 2) == expected_model
    plumbing = summary.plumbing_ms(m, "HTTP, 2", 2)
    assert plumbing == pytest.approx(24.5 - expected_model)
    assert summary.plumbing_ms(m, "AMQP, 2", 2) is None
    # Measured in the bare model's processes, its CPU per image holds on a busy machine, where
    # its throughput (and so a figure derived from it) drops.
    m.bare_cpu_ms[2] = 12.5
    assert summary.model_core_ms(m, 2) == 12.5
    assert summary.plumbing_ms(m, "HTTP, 2", 2) == pytest.approx(24.5 - 12.5)


def _precision(**changes: object) -> PrecisionResult:
    measured = PrecisionResult(
        model="efficientnet_lite0",
        photos=100,
        same_top1=97,
        max_logit_difference=0.47,
        cpu_bf16="avx512_bf16",
        precision="bf16",
        threads=1,
        batch=4,
        fp32_images_per_s=50.0,
        bf16_images_per_s=87.0,
        bf16_runtime="openvino 2026.4.1, CPU, 1 thread",
    )
    return replace(measured, **changes)


def test_bf16_rows_show_agreement_and_speed_up_against_their_targets() -> None:
    from bench import summary
    from bench.suite import Measurements

    m = Measurements()
    m.precision = _precision()
    agreement, speedup = (row.cells() for row in summary.precision_rows(m))
    assert agreement[2] == "same top-1 on 97/100 photos, max logit difference 0.47"
    assert agreement[5:] == ("≥ 0.95", "met")
    assert speedup[2] == "87.0 vs 50.0 images/s"
    assert speedup[4:] == ("1.74 × fp32", "≥ 1.5 × fp32", "met")
    m.precision = _precision(same_top1=90, bf16_images_per_s=60.0)
    assert [row.cells()[-1] for row in summary.precision_rows(m)] == ["**not met**"] * 2


def test_bf16_rows_on_a_cpu_without_it_say_so_and_measure_nothing() -> None:
    from bench import summary
    from bench.suite import Measurements

    m = Measurements()
    assert summary.precision_rows(m) == []
    # What the worker reports there: the "bf16" model ran fp32, agreeing with itself exactly.
    m.precision = _precision(cpu_bf16=None, precision="fp32", same_top1=100)
    for row in summary.precision_rows(m):
        assert "this CPU has no bfloat16 instructions" in row.result
        assert row.cells()[-1] == "not measured"


def test_precision_result_reads_the_workers_line() -> None:
    line = {
        "model": "efficientnet_lite0",
        "photos": 100,
        "same_top1": 97,
        "max_logit_difference": 0.47,
        "cpu_bf16": "avx512_bf16",
        "precision": "bf16",
        "runtime": {"fp32": "onnxruntime", "bf16": "openvino 2026.4.1, CPU, 1 thread"},
        "threads": 1,
        "batch": 4,
        "images_per_s": {"fp32": 50.0, "bf16": 87.0},
    }
    assert PrecisionResult.from_json(line) == _precision()
    assert _precision().speedup == pytest.approx(1.74)
    assert _precision().agreement == 0.97


def test_the_shares_rows_check_one_client_against_many_and_the_polite_clients_latency() -> None:
    from pathlib import Path

    from bench.fairness import FairnessResult, FloodResult
    from bench.suite import Measurements, Options
    from bench.summary import fairness_rows

    def run(throughput: float, latencies: list[float]) -> LoadResult:
        return LoadResult(
            jobs=len(latencies),
            elapsed=len(latencies) / throughput,
            per_image=[("a.jpg", s) for s in latencies],
        )

    options = Options(
        replicas=2,
        jobs=4,
        concurrency=16,
        images=Path("."),
        bare_seconds=1,
        submissions=1,
        long_polls=1,
        accuracy_models=(),
    )
    m = Measurements()
    m.fairness = FairnessResult(
        clients=16,
        many=run(40.0, [0.3] * 4),
        alone=run(39.0, [0.3] * 4),
        polite_alone=run(30.0, [0.020, 0.030, 0.040]),
        polite_flooded=run(20.0, [0.050, 0.070, 0.090]),
        flood=FloodResult(accepted=100, refused=50),
    )
    many, alone, polite, beside = fairness_rows(options, m)
    assert many.target is None
    assert alone.value == pytest.approx(39 / 40)
    assert alone.met is True
    assert polite.result.startswith("30 ms (p50")
    assert beside.value == pytest.approx(70 / 30)
    assert beside.met is False
    assert "100 of its jobs accepted meanwhile, 50 answered 429" in beside.setup


def test_the_gateway_rows_compare_event_loops_and_processes_and_check_the_default() -> None:
    from bench.gateway_load import SubmitResult
    from bench.suite import GatewaySubmits, GatewayVariant, Measurements, Options, default_gateway
    from bench.summary import gateway_rows

    options = Options(
        replicas=2,
        jobs=4,
        concurrency=16,
        images=Path("."),
        bare_seconds=1,
        submissions=1,
        long_polls=1,
        accuracy_models=(),
    )
    m = Measurements()
    default = default_gateway()
    runs = {
        GatewayVariant("asyncio"): (1000, 0.9),
        default: (1500, 0.45),
        GatewayVariant(default.event_loop, 2): (2400, 0.8),
    }
    for variant, (per_s, cpu_ms) in runs.items():
        result = SubmitResult(accepted=per_s * 2, elapsed=2.0)
        m.submits[variant] = GatewaySubmits(
            result, {"gateway": cpu_ms, "broker": 0.5, "load generator": 0.1}, foreign_cores=0.0
        )
    rows = gateway_rows(options, m)
    assert [row.measurement for row in rows] == [
        "gateway alone: submissions accepted",
        "gateway alone: CPU per submission",
    ] * 3
    reference, reference_cpu, ours, ours_cpu, several, several_cpu = rows
    # asyncio's own loop is the reference, with no target of its own.
    assert reference.target is None
    assert reference_cpu.target is None
    assert reference.ratio == "1.00 × asyncio, 1 process"
    assert (ours.result, ours.met) == ("1500/s", False)
    assert ours.ratio == "1.50 × asyncio, 1 process"
    assert "(the default)" in ours.setup
    assert (ours_cpu.result, ours_cpu.met) == ("0.45 core-ms", True)
    assert "the broker's 0.50, the load generator's 0.10" in ours_cpu.setup
    assert (several.result, several.met) == ("2400/s", True)
    assert several_cpu.target is None


def test_each_part_of_a_job_is_held_to_its_own_target() -> None:
    from bench import summary
    from bench.suite import Measurements, Options

    options = Options(
        replicas=2,
        jobs=10,
        concurrency=2,
        images=REPO,
        bare_seconds=1,
        submissions=1,
        long_polls=1,
        accuracy_models=(),
    )
    m = Measurements()
    m.bare[2] = 160.0  # 2 processes x 1 thread: 12.5 core-ms per image (on 2 cores)
    m.cpu_per_job["HTTP, 2"] = {
        "replicas": 13.0,
        "gateway": 1.2,
        "broker": 1.4,
        "load generator": 1.0,
    }
    m.cpu_per_job["AMQP, 2"] = {
        "replicas": 14.0,
        "gateway": 0.4,
        "broker": 1.6,
        "load generator": 1.0,
    }
    rows = {row.measurement: row for row in summary.cpu_rows(options, m)}
    model = summary.model_core_ms(m, 2)
    assert model is not None
    assert rows["replicas, CPU per job, HTTP"].value == pytest.approx(13.0 / model)
    assert rows["replicas, CPU per job, HTTP"].met is (13.0 / model <= 1.1)
    assert rows["gateway, CPU per job, HTTP"].met is False  # 1.2 > 1.0
    assert rows["gateway, CPU per job, AMQP"].met is True  # 0.4 <= 0.5
    assert rows["broker, CPU per job, HTTP"].met is True
    assert rows["broker, CPU per job, AMQP"].met is False


def test_the_log_is_written_as_the_services_frame_it() -> None:
    from bench import log_rate
    from shared import wire
    from shared.messages import EventBatch, JobEvent

    def events(out: wire.Outgoing) -> list[JobEvent]:
        if out.routing_key == "job.events":
            return list(EventBatch.from_json(out.message.body).events)
        return [JobEvent.from_json(out.message.body)]

    for framing, messages in ((log_rate.UNDER_LOAD, 2 * 3 + 1), (log_rate.ONE_A_MESSAGE, 30)):
        out, last = log_rate.framed(framing, 10, batch=4)
        assert len(out) == messages, framing
        seen = [event for message in out for event in events(message)]
        assert len(seen) == 30
        assert seen[-1].job_id == last
        # Each job's events in the order they happen, whatever shares their messages.
        for job_id in {event.job_id for event in seen}:
            statuses = [e.status.value for e in seen if e.job_id == job_id]
            assert statuses == ["queued", "started", "succeeded"], framing


def test_the_log_rows_check_the_replay_and_the_live_rate() -> None:
    from bench import summary
    from bench.log_rate import ONE_A_MESSAGE, UNDER_LOAD, LogRate
    from bench.suite import Measurements

    m = Measurements()
    m.log_rates = [
        LogRate(UNDER_LOAD, 100_002, 16_668, 4.0, 3.5, 60_000, 10_001, 6.0, 2.0),
        LogRate(ONE_A_MESSAGE, 100_002, 100_002, 10.0, 9.0),
    ]
    replay, live, single = summary.log_rows(m)
    assert replay.value == pytest.approx(100_002 / 4.0)
    assert replay.met is True
    assert live.value == pytest.approx(30_000)
    assert live.met is True
    assert single.target is None
    assert "10,000 events/s" in single.result


def test_a_jobs_time_is_split_into_its_stages() -> None:
    import asyncio

    from bench.load import Done, run_jobs

    async def job(image: str) -> Done:
        # Submitted at 100.0, started at 100.004, inferred until 100.020, held at 100.023.
        return Done(0.023, "r1", 100.004, 100.020, submitted=100.0)

    result = asyncio.run(run_jobs(job, ["a.jpg"], jobs=3, concurrency=1))
    assert len(result.stages) == 3
    to_replica, inference, back = result.stages[0]
    assert (to_replica, inference, back) == pytest.approx((0.004, 0.016, 0.003))
