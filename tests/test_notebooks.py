"""The notebooks run top to bottom (on a smaller workload)."""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_notebooks_execute():
    assert NOTEBOOKS, "no notebooks found"
    for nb in NOTEBOOKS:
        cells = json.loads(nb.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        code = code.replace("REQUESTS = 400", "REQUESTS = 60")
        ns: dict = {}
        exec(compile(code, str(nb), "exec"), ns)
        assert "results" in ns or "res" in ns
