"""notebooks/privacy_utility.ipynb runs top to bottom on a real (tiny) sweep, so it cannot rot."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from sweep_fixtures import tiny_sweep  # noqa: F401

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "privacy_utility.ipynb"
CURVE_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "share_curve_personas12.json"


@pytest.mark.slow
def test_privacy_notebook_executes(tiny_sweep, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:  # noqa: F811
    import nbformat
    from nbclient import NotebookClient

    out, sweep = tiny_sweep
    monkeypatch.setenv("SWEEP_DIR", str(out))  # the kernel inherits this process's environment
    curve = tmp_path / "curve"
    curve.mkdir()
    shutil.copy(CURVE_FIXTURE, curve / "share_curve.json")  # a real 12-user run's curve (personas)
    monkeypatch.setenv("SHARE_CURVE_DIR", str(curve))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # kernel "python3" is ipykernel's spec; jupyter_client swaps its "python" for sys.executable (this venv).
    client = NotebookClient(nb, kernel_name="python3", timeout=180,
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute(env=dict(os.environ))
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 5, "one figure per curve: share fraction, epsilon, MIA AUC, canary exposure, share curve"
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert f"{len(sweep['points'])} point(s)" in text
    assert "share_curve.json: 2 point(s)" in text and "oracle" in text
