"""The README's Python tour runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python block"
    for code in blocks:
        exec(compile(code, str(README), "exec"), {"__name__": "readme"})


def test_readme_has_exactly_two_setup_commands_at_top():
    text = README.read_text()
    top = text.split("\n## ", 1)[0]
    assert len(re.findall(r"```bash\n", top)) == 2


def test_ci_runs_the_readme_test_command():
    text = README.read_text()
    top = text.split("\n## ", 1)[0]
    test_cmd = re.findall(r"```bash\n(.*?)\n```", top, flags=re.S)[1].strip()
    ci = (README.parent / ".ci" / "run").read_text()
    assert test_cmd in ci
