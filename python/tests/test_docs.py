"""Every Python example of docs/python.md runs as written (from the repository root)."""

import os
import re

import pytest

from conftest import ROOT

DOC = os.path.join(ROOT, "docs", "python.md")
BLOCKS = re.findall(r"```python\n(.*?)```", open(DOC).read(), flags=re.S)


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_doc_example(i, monkeypatch, capsys):
    code = BLOCKS[i]
    if "import torch" in code:
        pytest.importorskip("torch")
    monkeypatch.chdir(ROOT)
    exec(compile(code, "docs/python.md block %d" % i, "exec"), {})


def test_every_entry_point_has_an_example():
    text = "\n".join(BLOCKS)
    for name in ("carl.route(", "carl.Router(", "carl.plan(", "carl.cost(", "carl.place(", "carl.evaluate(",
                 "carl.migrate(", "carl.sim(", "carl.Topology(", "carl.Placement.", "CarlGate(", ".to_dict()",
                 ".save(", "except carl."):
        assert name in text, name
