"""The public names of DESIGN.md exist where it says, and importing has no side effects."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from _subprocess import project_env

import zixir_actors

ROOT = Path(__file__).resolve().parent.parent

CONTRACT = {
    "zixir_actors.result": ["Ok", "Err"],
    "zixir_actors.workflow": ["Workflow", "Step", "RetryPolicy", "RunResult", "DeadLetters"],
    "zixir_actors.checkpoint": ["CheckpointStore"],
    "zixir_actors.sandbox": ["Sandbox", "Limits", "SandboxError"],
    "zixir_actors.stream": ["Stream", "async_", "await_", "parallel", "pmap"],
    "zixir_actors.observability": ["configure_logging", "logger", "span", "metrics",
                                   "serve_metrics"],
    "zixir_actors.cache": ["Cache"],
    "zixir_actors.runtime": ["start", "stop", "Runtime"],
    "zixir_actors.errors": ["ZixirError"],
    "supervisors": ["ChildSpec", "Supervisor", "DynamicSupervisor", "whereis", "ref",
                    "monitor", "Down"],
}


@pytest.mark.parametrize("module_name", sorted(CONTRACT))
def test_design_names_exist(module_name: str) -> None:
    module = importlib.import_module(module_name)
    for name in CONTRACT[module_name]:
        assert hasattr(module, name), f"{module_name}.{name} is missing"


def test_front_door_all_is_sorted_and_importable() -> None:
    assert zixir_actors.__all__ == sorted(zixir_actors.__all__)
    for name in zixir_actors.__all__:
        assert hasattr(zixir_actors, name), name


def test_every_error_is_a_zixir_error() -> None:
    from zixir_actors import errors

    for name in errors.__all__:
        value = getattr(errors, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            assert issubclass(value, errors.ZixirError), name
            assert name.endswith("Error"), name


def test_timeout_errors_are_timeout_errors() -> None:
    from zixir_actors import errors

    for name in errors.__all__:
        value = getattr(errors, name)
        if isinstance(value, type) and "Timeout" in name and name.endswith("Error"):
            assert issubclass(value, TimeoutError), name


def test_submodules_are_plain_modules() -> None:
    import types

    import zixir_actors.cache
    import zixir_actors.workflow

    for module in (zixir_actors.workflow, zixir_actors.cache):
        assert type(module) is types.ModuleType, module
        assert not callable(module), module


def _imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside functions."""
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_the_cli_imports_the_demo_never_the_reverse() -> None:
    package = ROOT / "zixir_actors"
    assert "zixir_actors._demo" in _imported_modules(package / "cli.py")
    assert "zixir_actors.cli" not in _imported_modules(package / "_demo.py")


def test_importing_starts_nothing_and_writes_nothing(tmp_path: Path) -> None:
    script = (
        "import threading, os\n"
        "before = threading.active_count()\n"
        "import zixir_actors, zixir_actors.cli, supervisors\n"
        "import loguru\n"
        "assert threading.active_count() == before, threading.enumerate()\n"
        "assert os.listdir('.') == [], os.listdir('.')\n"
        "print('clean')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, check=False,
                            env=project_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "clean"


def test_both_packages_ship_py_typed() -> None:
    assert (ROOT / "supervisors" / "py.typed").exists()
    assert (ROOT / "zixir_actors" / "py.typed").exists()
