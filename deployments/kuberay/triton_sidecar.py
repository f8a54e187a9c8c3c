"""Triton as the GPU worker pods' sidecar (rayservice-gpu.yaml): the tritonserver the easel image carries.

NGC's Triton image cannot serve the torch runtime's engines: its python backend has neither PyTorch nor this project.
This runs the tritonserver of the nvidia-pytriton wheel instead, as ``easel up`` does (serve/triton/server.py): the
python backend with the stub of this image's Python, Triton's bundled libraries, and this image's import path written
beside the models for their stubs. Its arguments go to tritonserver::

    python deployments/kuberay/triton_sidecar.py --model-repository=/models/repository --grpc-port=8001
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from serve.triton.environment import backend_directory, server_binary, server_environment
from serve.triton.repository import write_python_paths

REPOSITORY_FLAG = "--model-repository="


def command(args: list[str]) -> list[str]:
    """The tritonserver command line: the wheel's binary, the backends with this Python's stub, then ``args``."""
    return [str(server_binary()), f"--backend-directory={backend_directory()}", *args]


def main(args: list[str]) -> None:
    """Write the import path into the repository ``args`` name, then become tritonserver."""
    repository = next((a.removeprefix(REPOSITORY_FLAG) for a in args if a.startswith(REPOSITORY_FLAG)), None)
    if repository is None:
        sys.exit(f"usage: triton_sidecar.py {REPOSITORY_FLAG}DIR [tritonserver flags]")
    write_python_paths(Path(repository))
    line = command(args)
    os.execve(line[0], line, server_environment())


if __name__ == "__main__":
    main(sys.argv[1:])
