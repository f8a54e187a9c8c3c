import shutil
import subprocess

import pytest

from serve.paths import PROJECT_ROOT


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed (pip install -e '.[test]')")
def test_ruff_is_clean():
    paths = [p for p in ("serve", "build_engines", "tests", "loadtests") if (PROJECT_ROOT / p).is_dir()]
    result = subprocess.run(["ruff", "check", *paths], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
