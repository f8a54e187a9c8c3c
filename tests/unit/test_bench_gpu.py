"""``easel bench gpu``'s pure logic: acceptance lines, the deadline inside rows, the buckets checked, the out files."""

import asyncio
import logging

import pytest

from loadtests.benchmarks import gpu_clock, gpu_report
from loadtests.benchmarks.gpu_accept import FAIL, LOOP_MERGED, NOT_RUN, PASS, evaluate, format_verdicts
from loadtests.benchmarks.gpu_clock import Deadline, timed_calls
from loadtests.benchmarks.gpu_engines import check_rows
from loadtests.benchmarks.gpu_report import OUT_FILES, CappedLog, Report


class Clock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _row(model, method, concurrency, p50, p95, per_s, partial=False):
    return {
        "model": model,
        "method": method,
        "concurrency": concurrency,
        "p50_ms": p50,
        "p95_ms": p95,
        "per_s": per_s,
        "partial": partial,
    }


def _data(models=("sd15", "sdxl"), smoke=False, **lists):
    return {
        "settings": {"models": list(models), "smoke": smoke},
        "rows": [],
        "parity": [],
        "fractional": [],
        "per_step": [],
        "skipped": [],
        **lists,
    }


def _by_line(verdicts):
    return {v.line: v for v in verdicts}


def test_each_acceptance_line_passes_or_fails_against_its_bar():
    rows = [
        _row("sd15", LOOP_MERGED, 1, 280, 290, 3.5),
        _row("sd15", LOOP_MERGED, 8, 600, 800, 7.0),  # p95 800 > 2.5 x 280
        _row("sd15", LOOP_MERGED, 16, 1800, 1900, 8.5),
        _row("sd15", "diffusers float16, a wave as one batch", 16, 2000, 2000, 7.0),  # 8.5 / 7.0 = 1.21x
        _row("sdxl", LOOP_MERGED, 1, 1100, 1120, 0.9),
        _row("sdxl", LOOP_MERGED, 4, 3000, 3100, 1.2, partial=True),
        _row("sdxl", "diffusers float16, a wave as one batch", 4, 3500, 3500, 1.0),
    ]
    parity = [
        {"model": "sd15", "engine": "unet", "rows": 3, "relative_error": 4e-3},
        {"model": "sd15", "engine": "vae_decoder", "rows": 1, "relative_error": 2e-3},
        {"model": "sdxl", "engine": "unet", "rows": 31, "relative_error": 2e-2},
    ]
    per_step = [{"model": "sd15", "overhead_ms": 1.5, "per_step_ms": 13.5, "replay_ms": 12.0, "replay": "replay"}]
    fractional = [{"model": "sd15", "min_db": 36.0, "sampler": "Euler, Karras sigmas", "images": 2}]
    lines = _by_line(evaluate(_data(rows=rows, parity=parity, per_step=per_step, fractional=fractional)))
    assert lines["SD 1.5 512x512 c=1 p50"].status == PASS
    assert lines["SD 1.5 512x512 c=16 images/s"].status == PASS
    assert lines["SD 1.5 512x512 c=16 vs diffusers' static wave of 16"].status == PASS
    assert lines["SD 1.5 512x512 p95 at c=8 over the c=1 p50"].status == FAIL
    assert lines["SDXL 1024x1024 c=1 p50"].status == FAIL
    ratio = lines["SDXL c=4 vs diffusers' wave of 4"]
    assert ratio.status == PASS and "partial" in ratio.value
    assert lines["sd15: per-step overhead over bare graph replay at c=1"].status == PASS
    assert lines["sdxl: per-step overhead over bare graph replay at c=1"].status == NOT_RUN
    assert lines["sd15: fp16 parity against fp32, every captured bucket, padded ones too"].status == PASS
    assert lines["sdxl: fp16 parity against fp32, every captured bucket, padded ones too"].status == FAIL
    assert lines["sd15: fractional-timestep image (Euler, Karras sigmas), fp16 against fp32"].status == PASS
    http = lines["the lines above over HTTP through `easel up --device cuda`"]
    assert http.status == NOT_RUN and http.value == "Ray is not carried"


def test_lines_of_models_not_run_say_not_run_and_a_smoke_run_is_marked():
    lines = _by_line(evaluate(_data(models=("sdxl",))))
    assert lines["SD 1.5 512x512 c=1 p50"].status == NOT_RUN
    assert lines["SDXL 1024x1024 c=1 p50"].value == "no such row in this run"
    smoke = _data(models=("tiny",), smoke=True, rows=[_row("tiny", LOOP_MERGED, 1, 50, 60, 20.0)])
    text = format_verdicts(smoke)
    assert "SMOKE RUN" in text.splitlines()[0]
    assert any(line.startswith(PASS) and "tiny (smoke" in line and "c=1 p50" in line for line in text.splitlines())


def test_a_deadline_share_is_the_weight_over_the_weights_left():
    clock = Clock()
    whole = Deadline.after(100, clock)
    first = whole.share(1.0, 3.0)
    assert first.left_s() == pytest.approx(100 / 3)
    clock.now = 10  # the first part ended early: the rest goes to the others
    assert whole.share(2.0, 2.0).left_s() == pytest.approx(90)
    assert whole.within(5).left_s() == pytest.approx(5)
    clock.now = 200
    assert whole.expired() and whole.share(1.0, 1.0).expired()


def test_a_row_stops_issuing_calls_at_its_deadline_and_keeps_what_it_measured():
    clock = Clock()
    deadline = Deadline.after(10, clock)
    calls = []

    async def call(index: int) -> None:
        calls.append(index)
        clock.now += 3  # each call moves the clock past a part of the deadline

    timed = asyncio.run(timed_calls(call, 1, 100, deadline))
    assert timed.partial and len(timed.latencies_s) == len(calls) == 4  # started at 0, 3, 6, 9; none at 12
    whole = asyncio.run(timed_calls(call, 2, 4, Deadline.after(1000, clock), warmup=2))
    assert not whole.partial and len(whole.latencies_s) == 4


def test_a_call_hanging_past_the_deadline_is_abandoned(monkeypatch):
    monkeypatch.setattr(gpu_clock, "GRACE_S", 0.05)

    async def hangs(index: int) -> None:
        if index:
            await asyncio.sleep(3600)

    timed = asyncio.run(timed_calls(hangs, 1, 5, Deadline.after(0.05)))
    assert timed.partial and len(timed.latencies_s) == 1


def test_every_bucket_is_checked_full_and_padded_where_a_smaller_row_count_pads_into_it():
    assert check_rows((1, 2, 4, 8)) == [(1, 1), (2, 2), (4, 4), (3, 4), (8, 8), (7, 8)]
    assert check_rows((8, 12, 16)) == [(8, 8), (7, 8), (12, 12), (11, 12), (16, 16), (15, 16)]
    assert check_rows(()) == [(1, 0)]


def test_the_out_folder_gets_three_files_and_the_log_is_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_report, "MAX_LOG_BYTES", 2000)
    out = tmp_path / "out"
    out.mkdir()
    log = CappedLog(out / "gpu.log")
    logger = logging.getLogger("test_bench_gpu.capped")
    logger.addHandler(log)
    logger.setLevel(logging.INFO)
    triton = tmp_path / "work" / "triton.log"
    triton.parent.mkdir()
    triton.write_text("early line\n" + "x" * 500 + "\nlast line\n")
    try:
        report = Report(out, device="cpu", settings={"models": ["tiny"], "smoke": True})
        report.add("skipped", {"model": "tiny", "why": "a test"})
        log.append("Triton log, tiny", triton, limit=100)
        for index in range(200):
            logger.info("line %d %s", index, "y" * 50)
    finally:
        logger.removeHandler(log)
        log.close()
    assert sorted(p.name for p in out.iterdir()) == sorted(OUT_FILES)
    text = (out / "gpu.log").read_text()
    assert "last line" in text and "early line" not in text
    assert "the log is cut here" in text and len(text) < 2000 + 200


def test_a_model_is_made_on_a_device_from_its_configs_as_the_cpu_path_makes_it(tmp_path):
    from build_engines.text_to_image.build import default_model_dir
    from build_engines.text_to_image.published import create_random_model
    from serve.text_to_image.families import family_of_folder

    source = default_model_dir("tiny")
    made = create_random_model("tiny", tmp_path / "random-tiny", device="cpu", source=source)
    assert made == tmp_path / "random-tiny" and not (tmp_path / "random-tiny.partial").exists()
    assert family_of_folder(made).name == family_of_folder(source).name  # every component has its weights
    for component in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (made / component).is_dir(), component
    assert (made / "unet" / "config.json").read_text() != ""
