"""The project names no path of the machine it was built on: a fresh checkout works anywhere.

Tools that need a local venv (the isolated reference venv) default to a folder
inside the checkout that git ignores.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MACHINE_ROOTS = ("/work/", "/home/", "/root/", "/Users/")  # where checkouts and venvs live on someone's machine


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def in_checkout() -> None:
    if shutil.which("git") is None or _git("rev-parse", "--git-dir").returncode != 0:
        pytest.skip("not a git checkout")


def test_tracked_files_name_no_machine_path(in_checkout):
    pattern = "|".join(root.replace("/", r"\/") for root in MACHINE_ROOTS)
    found = _git("grep", "-n", "-I", "-E", pattern, "--", ".", ":!tests/fixtures", ":!tests/test_no_machine_paths.py")
    assert found.returncode == 1, f"machine paths in tracked files:\n{found.stdout}"  # 1: no match


def test_reference_venv_defaults_inside_the_checkout_and_is_ignored(in_checkout):
    script = (ROOT / "tools" / "cosyvoice_reference_venv.sh").read_text(encoding="utf-8")
    assert '/.refvenv}"' in script
    assert _git("check-ignore", "-q", ".refvenv/bin/python").returncode == 0
