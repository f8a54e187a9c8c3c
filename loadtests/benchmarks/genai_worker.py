"""Times ``openvino_genai.Text2ImagePipeline`` for ``easel bench cpu``; run by the Python that has openvino_genai.

Standalone (the standard library and openvino_genai only): that Python is another virtual environment's, whose
transformers and diffusers differ from Easel's. Its one argument is JSON: the exported model folder, the inference
precision hint, repeats, and the cells (steps, scheduler, guidance, size, seed, concurrency). It writes one JSON line
per cell: each call's seconds, the images made and the wall time. Its Python API has no concurrent generation on one
pipeline (no ``clone``), and a pipeline per request would compile the models again each: concurrency c is one call
of ``num_images_per_prompt=c``, batched.
"""

import json
import os
import sys
import time

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

        def generate(cell=cell, width=width, height=height, steps=None) -> float:
            started = time.perf_counter()
            pipeline.generate(
                cell["prompt"],
                width=width,
                height=height,
                num_inference_steps=steps or cell["num_inference_steps"],
                guidance_scale=cell["guidance_scale"],
                num_images_per_prompt=cell["concurrency"],
                rng_seed=cell["seed"],
            )
            return time.perf_counter() - started

        generate(steps=1)  # one step at this size, as Easel's stack is warmed: compiled, memory allocated
        latencies = [generate() for _ in range(asked["repeats"])]
        wall = sum(latencies)
        images = cell["concurrency"] * asked["repeats"]
        done = {"row": cell["row"], "concurrency": cell["concurrency"], "latencies": latencies, "images": images}
        sys.stdout.write(json.dumps(done | {"wall_s": wall}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
