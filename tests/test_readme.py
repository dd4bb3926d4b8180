"""The README's Python section runs as written (in a scratch folder, on the shipped models) and writes
what it says."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


@pytest.mark.parametrize("block", _python_blocks(), ids=lambda code: code.split("\n")[0])
def test_readme_python_runs_as_written(block, tmp_path, monkeypatch, capsys):
    from molctrl.io import read_molecules
    from shapectrl.io import read_ply

    monkeypatch.chdir(tmp_path)
    exec(compile(block, str(README), "exec"), {})  # noqa: S102 -- the README's own code, run as a user would
    printed = capsys.readouterr().out
    assert "validity" in printed or "class_accuracy" in printed
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert files, "the example writes what it generates"
    for path in files:
        if path.suffix == ".sdf":
            molecules = read_molecules(path)
            assert molecules and all("predicted_alpha" in m.properties for m in molecules)
        elif path.suffix == ".ply":
            assert read_ply(path).shape[1] == 3
