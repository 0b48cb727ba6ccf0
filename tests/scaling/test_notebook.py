"""notebooks/scaling_laws.ipynb runs top to bottom on the shipped results table."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "scaling_laws.ipynb"


def test_scaling_notebook_executes():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  NotebookClient(nb, timeout=120, kernel_name="python3",
                 resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
  text = "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                 for out in cell.get("outputs", []))
  assert "approach 3" in text and "Kaplan" in text and "Chinchilla's N_opt" in text
  images = [out for cell in nb.cells for out in cell.get("outputs", [])
            if "image/png" in out.get("data", {})]
  assert len(images) >= 2
