"""Times ``openvino_genai.Text2ImagePipeline`` for ``easel bench cpu``; run by the Python that has openvino_genai.

Standalone (the standard library and openvino_genai only): that Python is another virtual environment's, whose
transformers and diffusers differ from Easel's. Its one argument is JSON: the exported model folder, the inference
precision hint, repeats, and the cells (steps, scheduler, guidance, size, seed, concurrency). It writes one JSON line
per cell: each request's seconds, the images made and the wall time of the rounds. Concurrent requests run on clones
of the pipeline (shared compiled models, one infer request each), as a server would run them.
"""

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import openvino_genai as genai

SCHEDULERS = {"lcm": "LCM", "ddim": "DDIM", "euler": "EULER_DISCRETE"}


def main() -> None:
    """Run every asked cell and print its timings as one JSON line."""
    asked = json.loads(sys.argv[1])
    cores = len(os.sched_getaffinity(0))
    config = {"INFERENCE_PRECISION_HINT": asked["hint"], "INFERENCE_NUM_THREADS": cores}
    pipeline = genai.Text2ImagePipeline(asked["model"], "CPU", **config)
    config_path = os.path.join(asked["model"], "scheduler", "scheduler_config.json")
    for cell in asked["cells"]:
        kind = getattr(genai.Scheduler.Type, SCHEDULERS[cell["scheduler"]])
        pipeline.set_scheduler(genai.Scheduler.from_config(config_path, kind))
        width, height = (int(side) for side in cell["size"].split("x"))
        clones = [pipeline.clone() for _ in range(cell["concurrency"])]

        def generate(clone, cell=cell, width=width, height=height, steps=None) -> float:
            started = time.perf_counter()
            clone.generate(
                cell["prompt"],
                width=width,
                height=height,
                num_inference_steps=steps or cell["num_inference_steps"],
                guidance_scale=cell["guidance_scale"],
                rng_seed=cell["seed"],
            )
            return time.perf_counter() - started

        for clone in clones:  # one step at this size, as Easel's stack is warmed: compiled, memory allocated
            generate(clone, steps=1)
        latencies, wall = [], 0.0
        with ThreadPoolExecutor(len(clones)) as pool:
            for _ in range(asked["repeats"]):
                started = time.perf_counter()
                latencies += list(pool.map(generate, clones))
                wall += time.perf_counter() - started
        images = len(clones) * asked["repeats"]
        done = {"row": cell["row"], "concurrency": len(clones), "latencies": latencies, "images": images}
        sys.stdout.write(json.dumps(done | {"wall_s": wall}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
