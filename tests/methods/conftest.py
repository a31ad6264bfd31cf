"""The real SmolLM2-135M, exported fp32 and INT4 once per test session (slow tests only).

Reuses ``artifacts/smollm2-{fp32,int4}`` when a current export is already there (what `make demo` and the benchmarks
write); otherwise exports into the session's temporary folder (about a minute each on 2 cores).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.contract import FORMAT_VERSION, Manifest, ManifestError

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


def _current(folder: Path) -> bool:
    try:
        return Manifest.load(folder).format_version == FORMAT_VERSION
    except ManifestError:
        return False


@pytest.fixture(scope="session")
def real_model_dirs(tmp_path_factory) -> dict[str, Path]:
    from export.config import ExportConfig
    from export.exporter import export_source

    out = {}
    for name, int4 in (("fp32", False), ("int4", True)):
        cached = ARTIFACTS / f"smollm2-{name}"
        if _current(cached):
            out[name] = cached
            continue
        folder = tmp_path_factory.mktemp(f"smollm2-{name}") / "model"
        export_source("smollm2-135m", folder, ExportConfig(int4=int4), force=True)
        out[name] = folder
    return out
