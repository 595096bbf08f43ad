"""Every notebook in notebooks/ runs top to bottom (a fresh kernel each, no download)."""

import os
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
TIMEOUT_S = 300  # per cell; each notebook takes well under a minute or two on a 2-core CPU


def test_there_are_notebooks():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    # The kernel is a new process: keep XLA to one thread pool as the test suite does.
    env = {**os.environ}
    env.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    client = nbclient.NotebookClient(
        nb, timeout=TIMEOUT_S, kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute(env=env)  # raises CellExecutionError, with the cell and traceback, on failure
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
