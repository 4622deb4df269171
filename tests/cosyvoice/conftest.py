"""Tiny random CosyVoice model directories (v1, v2, v3), generated once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from cosyvoice.model.loader import Components, load_model  # noqa: E402
from tools.make_cosyvoice_model import make_model  # noqa: E402

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "cosyvoice"
# Tiny models gain nothing from a second thread, and on a busy 2-core machine small ops stall
# on thread hand-offs (seen: the parity tests 9 s with one idle core, 80 s with two contended).
# test_kernel_choices.py runs the parity tests again with more (threads split reductions differently).
torch.set_num_threads(int(os.environ.get("COSYVOICE_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("cosyvoice-models")
    return {g: make_model(root / f"tiny_v{g}", f"v{g}", "tiny", seed=0) for g in (1, 2, 3)}


@pytest.fixture(scope="session")
def models(model_dirs: dict[int, Path]) -> dict[int, Components]:
    torch.set_grad_enabled(False)
    return {g: load_model(path) for g, path in model_dirs.items()}


@pytest.fixture(scope="session")
def reference() -> dict[int, dict]:
    return {g: torch.load(FIXTURES / f"reference_v{g}.pt", weights_only=True) for g in (1, 2)}
