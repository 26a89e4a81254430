"""README.md's examples work as written: the files they name exist, and the Python one runs.
That the Run section shows what its command prints is checked in test_shipped_adapters.py."""
import glob
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def code_blocks(language: str = "") -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_every_shipped_file_the_readme_names_exists():
    # Only the folders the repository ships: a user's data/ or test/ paths are examples.
    named = set(re.findall(r"\b((?:examples|adapters)/[\w.*/-]+)", README))
    assert named, "README names no example files"
    missing = [p for p in sorted(named) if not glob.glob(str(ROOT / p.rstrip(".")))]
    assert not missing, f"README.md names files that do not exist: {missing}"


def test_the_python_example_runs(monkeypatch, capsys):
    (block,) = code_blocks("python")
    monkeypatch.chdir(ROOT)
    exec(compile(block, "README.md", "exec"), {})
    text, start = capsys.readouterr().out.rsplit(" ", 1)
    assert "Taylor Swift" in text and float(start) == 0.0  # examples/music1.wav asks for Taylor Swift


def test_every_top_level_module_is_installed():
    # pyproject lists them by hand: one left out imports from the checkout but not once installed.
    # (Read with a regex: tomllib needs Python 3.11, and the project supports 3.10.)
    (names,) = re.findall(r"^py-modules = \[(.*?)\]", (ROOT / "pyproject.toml").read_text(), flags=re.S | re.M)
    assert sorted(re.findall(r'"(\w+)"', names)) == sorted(p.stem for p in ROOT.glob("*.py"))
