"""Every Python example in README.md and examples/ runs, and so do the docstring examples."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _subprocess import project_env

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"```python\n(.*?)```", re.DOTALL)


def _readme_blocks() -> list[str]:
    return FENCE.findall((ROOT / "README.md").read_text())


def _run(args: list[str], cwd: Path, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    env = {**project_env(), "ZIXIR_DATA_DIR": str(cwd / ".zixir")}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_readme_has_python_examples() -> None:
    assert len(_readme_blocks()) >= 3


@pytest.mark.parametrize("index", range(len(_readme_blocks())))
def test_readme_example_runs(index: int, tmp_path: Path) -> None:
    script = tmp_path / f"readme_{index}.py"
    script.write_text(_readme_blocks()[index])
    result = _run([sys.executable, str(script)], tmp_path)
    assert result.returncode == 0, f"README block {index} failed:\n{result.stderr[-3000:]}"


EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(path: Path, tmp_path: Path) -> None:
    result = _run([sys.executable, str(path)], tmp_path, timeout=180.0)
    assert result.returncode == 0, f"{path.name} failed:\n{result.stderr[-3000:]}"


def _modules() -> list[str]:
    names = []
    for package in ("supervisors", "zixir_actors"):
        pkg = importlib.import_module(package)
        names.append(package)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}."):
            if info.name.endswith(("__main__", ".cli")):
                continue
            names.append(info.name)
    return names


@pytest.mark.parametrize("module_name", _modules())
def test_docstring_examples(module_name: str, tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {module_name}"
