"""One SDXL stack for every module here: the tiny-xl as its default model with adapters and ControlNets, the embedded
tiny SD beside it, and both families' inpainting checkpoints (four modules once started four stacks, ~1 min each).

Its tests leave it as they found it, but for what they add through the API (a LoRA uploaded for ``xl``).
"""
