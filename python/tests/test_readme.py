"""The README's Python example runs as written (from the repository root)."""

import os
import re

from conftest import ROOT


def test_readme_python_example(capsys):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README has no ```python example"
    example = blocks[0]
    assert len(example.strip().splitlines()) <= 6
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        exec(compile(example, "README.md", "exec"), {})
    finally:
        os.chdir(cwd)
    assert capsys.readouterr().out.strip()
