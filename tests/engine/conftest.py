"""Fixtures of the engine's fault tests: a real small disk to fill."""
import subprocess
from pathlib import Path

import pytest


@pytest.fixture
def mount_tmpfs(tmp_path):
    """mount(size) -> a tmpfs of that many bytes (root only; skips where mounting is not permitted)."""
    mounted = []

    def mount(size: int) -> Path:
        path = tmp_path / "disk"
        path.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode:
            pytest.skip("cannot mount a tmpfs here (not root, or not permitted)")
        mounted.append(path)
        return path
    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
