"""`easel bench generate --device`: a seconds-long CPU run, so the GPU benchmark's command keeps working."""

from loadtests.benchmarks.device import bench_on_device
from loadtests.benchmarks.generate import GenerateSettings
from loadtests.benchmarks.loop import format_table
from serve.text_to_image.engine_folder import EngineFolder


def test_every_row_runs_at_every_concurrency_on_cpu(default_model, engine_dir):
    """Rows after one whose calls waited on a runner's lock run too (every row in one event loop)."""
    settings = GenerateSettings(steps=2, size=64, repeats=1, concurrency=(2, 3))
    rows, peak = bench_on_device(default_model, EngineFolder(engine_dir), settings, "cpu")
    methods = ["diffusers float32", "easel loop", "easel loop merged"]
    assert [(r.method, r.concurrency) for r in rows] == [(m, c) for m in methods for c in (2, 3)]
    assert all(r.requests == r.concurrency and r.p50_ms > 0 and r.per_s > 0 for r in rows)
    assert peak == {}  # device memory is reported on CUDA only
    assert "easel loop merged" in format_table(rows, "img")
