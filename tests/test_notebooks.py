"""The notebooks run top to bottom (executed with nbclient, as CI does), so
they cannot rot."""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat not installed")
nbclient = pytest.importorskip("nbclient", reason="nbclient not installed")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.slow  # ~35 s on 2 cores (loads SmolLM2, one 4K prompt)
def test_pattern_analysis_notebook_runs():
  path = NOTEBOOKS / "pattern_analysis.ipynb"
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(
      nb, timeout=600, kernel_name="python3",
      resources={"metadata": {"path": str(NOTEBOOKS)}})
  client.execute()  # raises CellExecutionError on any failing cell
  outputs = [o for cell in nb.cells if cell.cell_type == "code"
             for o in cell.get("outputs", [])]
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) >= 3, "expected the maps, the sweep and the head map"
  assert not [o for o in outputs if o.get("output_type") == "error"]
