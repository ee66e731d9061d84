"""examples/seq2seq.ipynb (issue #13) executed by nbclient on a real ipykernel against a real
server: trains the GRU encoder-decoder as a job, then greedy and beam search decode in one run
each; the notebook's own asserts check beam >= greedy and > 50% exact matches."""

from __future__ import annotations

import pathlib
import re

import pytest

pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = pathlib.Path(__file__).resolve().parents[2] / "examples" / "seq2seq.ipynb"


@pytest.mark.slow
def test_seq2seq_notebook_trains_and_decodes_on_a_real_server(notebook_server, run_notebook):
    nb = run_notebook(NOTEBOOK, timeout=900)
    with notebook_server.connect() as rt:
        assert [j["status"] for j in rt.jobs() if j["name"] == "reverse-digits"] == ["completed"]
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    m = re.search(r"exact-match accuracy: greedy ([\d.]+), beam search \(width 4\) ([\d.]+)", text)
    assert m, text
    greedy, beam = float(m.group(1)), float(m.group(2))
    assert beam >= greedy and beam > 0.5
