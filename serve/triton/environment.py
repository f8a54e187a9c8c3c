"""How the tritonserver binary of the nvidia-pytriton wheel is run: its backends folder and its environment.

The python backend's stub is the one built for this interpreter's Python version; the server's environment carries
its bundled libraries, this interpreter's libpython, the allocator settings of served engines and each engine's
activation pool. Used by :class:`serve.triton.server.TritonServer` and the KubeRay sidecar.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path

from serve.paths import easel_home
from serve.triton.activations import ActivationPool, pools_environment


def _pytriton_dir() -> Path:
    import pytriton

    return Path(pytriton.__file__).parent


def server_binary() -> Path:
    """The wheel's ``tritonserver``."""
    return _pytriton_dir() / "tritonserver" / "bin" / "tritonserver"


def backend_directory() -> Path:
    """A backends folder whose python backend carries the stub built for this interpreter's Python version."""
    source = _pytriton_dir() / "tritonserver" / "backends" / "python"
    target = easel_home() / "triton" / f"backends-py{sys.version_info.major}.{sys.version_info.minor}"
    python = target / "python"
    stub = (
        _pytriton_dir() / "tritonserver" / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}"
    )
    if not (python / "triton_python_backend_stub").exists():
        python.mkdir(parents=True, exist_ok=True)
        for item in source.iterdir():
            if item.is_file():
                shutil.copy2(item, python / item.name)
        shutil.copy2(stub / "triton_python_backend_stub", python / "triton_python_backend_stub")
    return target


# glibc serves allocations over its mmap threshold from fresh mappings that free() returns to the system at once;
# by default that threshold grows with every large block freed (up to 32 MiB), after which activations come from the
# heap and a large request's memory stays resident. A fixed threshold keeps giving it back. ONNX Runtime's arena is
# off in served sessions for the same reason (onnx_backend.make_session).
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20), "MALLOC_TRIM_THRESHOLD_": str(16 << 20)}


def allocator_environment() -> dict[str, str]:
    """This environment with the allocator settings of served engines (also used where engines are measured)."""
    return {**os.environ, **ALLOCATOR_ENV}


def server_environment(pools: dict[str, ActivationPool] | None = None) -> dict[str, str]:
    """Environment for tritonserver.

    Its bundled libraries, this interpreter's libpython first for the stub, the allocator settings, and each engine's
    activation pool (by Triton model name) for the python backend.
    """
    libs = [sysconfig.get_config_var("LIBDIR"), str(_pytriton_dir().parent / "nvidia_pytriton.libs")]
    env = allocator_environment()
    env["LD_LIBRARY_PATH"] = ":".join([*libs, env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env | pools_environment(pools or {})
