"""The `supervisors` front door: a sorted `__all__`, every name importable,
and an import with no side effects that never pulls in `zixir_actors`."""

from __future__ import annotations

import re
import subprocess
import sys

import supervisors
from supervisors import errors


def _isort_key(name: str) -> tuple[int, str]:
    # The order ruff's RUF022 keeps: CONSTANTS, then Classes, then functions.
    group = 0 if name.isupper() else 1 if name[:1].isupper() else 2
    return group, name


def test_all_is_sorted_and_unique() -> None:
    assert supervisors.__all__ == sorted(supervisors.__all__, key=_isort_key)
    assert len(set(supervisors.__all__)) == len(supervisors.__all__)


def test_every_public_name_is_importable() -> None:
    for name in supervisors.__all__:
        assert getattr(supervisors, name) is not None, name
    namespace: dict[str, object] = {}
    exec("from supervisors import *", namespace)  # the star import users write
    assert set(supervisors.__all__) <= set(namespace)


def test_the_documented_api_is_exported() -> None:
    documented = {
        "ChildSpec", "Supervisor", "DynamicSupervisor", "SupervisorRef", "SupervisedActor",
        "Down", "Monitor", "Started", "monitor", "spawn", "ref", "whereis", "register",
        "unregister", "add_listener", "remove_listener", "set_message_hook", "ChildStarted",
        "ChildExited", "ChildRestarted", "IntensityExceeded", "Child", "ChildCounts",
    }
    assert documented <= set(supervisors.__all__)


def test_errors_share_one_root_and_are_exported() -> None:
    for name in errors.__all__:
        error = getattr(errors, name)
        assert issubclass(error, errors.ZixirError) and name.endswith("Error")
        assert getattr(supervisors, name) is error
    assert issubclass(supervisors.NameTakenError, errors.SupervisorError)
    assert issubclass(errors.SupervisorTimeoutError, TimeoutError)
    assert issubclass(errors.ShutdownTimeoutError, TimeoutError)


def test_import_never_imports_zixir_actors_and_starts_no_thread() -> None:
    code = (
        "import sys, threading\n"
        "before = {t.ident for t in threading.enumerate()}\n"
        "import supervisors, supervisors.errors, supervisors.spec, supervisors.supervisor\n"
        "import supervisors.dynamic, supervisors.registry, supervisors.monitor\n"
        "import supervisors.events, supervisors._actor\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'zixir_actors'], 'zixir'\n"
        "assert {t.ident for t in threading.enumerate()} == before, threading.enumerate()\n"
        "print('clean')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.stdout.strip() == "clean", done.stderr


def test_no_module_of_the_package_imports_zixir_actors() -> None:
    from pathlib import Path

    package = Path(supervisors.__file__).parent
    for source in package.glob("*.py"):
        assert not re.search(r"^\s*(from|import)\s+zixir_actors", source.read_text(),
                             re.MULTILINE), source.name
    assert (package / "py.typed").exists()
