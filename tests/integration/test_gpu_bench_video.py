"""``easel bench gpu``'s video stages on a CPU (the tiny SVD in fp32: a smoke run, its times mean nothing): diffusers'
SVD and the IFNet module in process, the replica's SVD loop and the interpolator engine through a real Triton."""

import json

from loadtests.benchmarks.gpu import run_gpu_bench
from loadtests.benchmarks.gpu_rows import GpuBenchSettings
from loadtests.benchmarks.gpu_video import FACTOR, RIFE_MODULE, RIFE_SERVED, SVD_DIFFUSERS, SVD_SERVED


def test_the_video_stages_run_every_row_and_the_served_frames_match_diffusers(tmp_path):
    settings = GpuBenchSettings(("tiny-svd",), "cpu", steps=2, repeats=1, budget_s=300, smoke=True)
    text = run_gpu_bench(settings, tmp_path / "out", tmp_path / "work")
    data = json.loads((tmp_path / "out" / "gpu.json").read_text())
    assert data["failed"] == [] and data["skipped"] == [], text
    rows = {(row["method"], row["concurrency"]) for row in data["rows"]}
    diffusers = f"{SVD_DIFFUSERS} float32"
    assert rows == {(diffusers, 1), (RIFE_MODULE, 1), (SVD_SERVED, 1), (SVD_SERVED, 2), (RIFE_SERVED, 1)}
    (frames,) = data["psnr"]
    assert frames["min_db"] >= 40, frames  # the replica's loop through Triton draws diffusers' frames
    video = {(entry["method"], entry["concurrency"]): entry for entry in data["video"]}
    assert video[(SVD_SERVED, 2)]["frames"] == 6 and video[(SVD_SERVED, 2)]["steps"] == 2
    assert video[(RIFE_SERVED, 1)]["new_frames"] == video[(RIFE_MODULE, 1)]["new_frames"] == (6 - 1) * (FACTOR - 1)
    assert data["video_models"] == ["tiny-svd"] and "tiny-svd: per-step overhead" not in text
    assert "ms per frame-step (6 frames x 2 steps at 128x72)" in text
