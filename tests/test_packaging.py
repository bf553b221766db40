"""The wheel built from the source tree ships the grammar, and the parser finds it there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def build_wheel(tmp_path: Path) -> Path:
    """Build a wheel offline from a copy of the tree, so the build leaves no files in it."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    src.mkdir()
    shutil.copy2(ROOT / "pyproject.toml", src / "pyproject.toml")
    shutil.copytree(ROOT / "dslc", src / "dslc", ignore=ignore)
    shutil.copytree(ROOT / "grammar", src / "grammar", ignore=ignore)
    readme = ROOT / "README.md"
    if readme.exists():
        shutil.copy2(readme, src / "README.md")
    else:
        (src / "README.md").write_text("dslc\n")
    out = tmp_path / "wheels"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            ".",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(out),
        ],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("dslc-*.whl")
    return wheel


def test_wheel_ships_the_grammar_and_parses_with_it(tmp_path):
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert "dslc/grammar/nn.lark" in names
    assert "dslc/syntax/parser.py" in names
    packed = zipfile.ZipFile(wheel).read("dslc/grammar/nn.lark").decode("utf-8")
    assert packed == (ROOT / "grammar" / "nn.lark").read_text(encoding="utf-8")

    # Import dslc from the unpacked wheel alone: the grammar must come from inside the package.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "import dslc.syntax.parser as p\n"
        "from importlib import resources\n"
        "m = p.parse('model M { input x: float[2]\\n output y = x -> relu }', 'w.nn')\n"
        "print(p.__file__)\n"
        "print(resources.files('dslc.grammar').joinpath('nn.lark'))\n"
        "print(type(m.decls[0]).__name__)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(site))
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    parser_file, grammar_file, decl = result.stdout.split()
    assert Path(parser_file).is_relative_to(site)
    assert Path(grammar_file).is_relative_to(site)
    assert decl == "ModelDecl"


def test_grammar_falls_back_to_the_source_tree(monkeypatch):
    from dslc.syntax import parser

    if Path(parser.__file__).resolve().parents[2] != ROOT:
        pytest.skip("dslc is imported from an installed copy, not from this source tree")

    def missing(package):
        raise ModuleNotFoundError(package)

    monkeypatch.setattr(parser.resources, "files", missing)
    assert parser._grammar_text() == (ROOT / "grammar" / "nn.lark").read_text(encoding="utf-8")
