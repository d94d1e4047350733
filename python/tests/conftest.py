"""Shared fixtures: the repository's real models (.models/, installed by scripts/setup-models)
and the `medkern` CLI, whose answers are the Rust API's (the CLI calls the same library
functions the Python classes wrap)."""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / ".models"
MINILM = MODELS / "all-MiniLM-L6-v2"
LITE0 = MODELS / "efficientnet-lite0" / "model.safetensors"
IMAGES = sorted(p for p in (MODELS / "images").glob("*") if p.suffix in (".png", ".jpg"))
CLI = Path(os.environ.get("MEDKERN_CLI", ROOT / "target" / "debug" / "medkern"))


def need(path: Path) -> Path:
    if not path.exists():
        if os.environ.get("MEDKERN_SKIP_MODELS") == "1":
            pytest.skip(f"{path} missing (MEDKERN_SKIP_MODELS=1)")
        pytest.fail(f"{path} missing: run scripts/setup-models")
    return path


def cli(*args: str) -> object:
    """Runs the medkern CLI and parses its JSON answer."""
    if not CLI.exists():
        pytest.fail(f"{CLI} missing: run cargo build --bin medkern")
    out = subprocess.run([str(CLI), *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


@pytest.fixture(scope="session")
def minilm():
    import medkern

    return medkern.BertModel.load(need(MINILM), device="cpu")


@pytest.fixture(scope="session")
def lite0():
    import medkern

    return medkern.EfficientNet.load(need(LITE0), variant="lite0", device="cpu")
