"""`ChildSpec`: defaults, inference and validation (bad input never starts anything)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pykka
import pytest

from supervisors import (
    DEFAULT_MAX_RESTARTS,
    DEFAULT_MAX_SECONDS,
    DEFAULT_SHUTDOWN,
    ChildSpec,
    DynamicSupervisor,
    InvalidSpecError,
    Supervisor,
)


class Echo(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        return message


def test_defaults() -> None:
    spec = ChildSpec("echo", Echo)
    assert (spec.args, spec.kwargs, spec.restart, spec.shutdown, spec.type, spec.name) == (
        (), None, "permanent", DEFAULT_SHUTDOWN, "worker", None)
    assert DEFAULT_SHUTDOWN == 5.0 and DEFAULT_MAX_RESTARTS == 3 and DEFAULT_MAX_SECONDS == 5.0


def test_supervisor_children_default_to_type_supervisor_and_infinite_shutdown() -> None:
    for start in (Supervisor, DynamicSupervisor):
        spec = ChildSpec("sup", start)
        assert spec.type == "supervisor" and spec.shutdown is None


def test_explicit_values_are_kept() -> None:
    spec = ChildSpec("e", Echo, args=[1, 2], kwargs={"k": 1}, restart="transient",
                     shutdown="brutal_kill", type="supervisor", name="x.e")
    assert spec.args == (1, 2) and spec.kwargs == {"k": 1} and spec.restart == "transient"
    assert spec.shutdown == "brutal_kill" and spec.type == "supervisor" and spec.name == "x.e"
    assert ChildSpec("e", Echo, shutdown=None).shutdown is None
    assert ChildSpec("e", Echo, shutdown=0).shutdown == 0


def test_start_kwargs_is_a_fresh_copy_each_time() -> None:
    spec = ChildSpec("e", Echo, kwargs={"k": 1})
    first = spec.start_kwargs
    first["k"] = 2
    assert spec.start_kwargs == {"k": 1} and spec.start_kwargs is not first


def test_a_spec_is_a_frozen_value() -> None:
    spec = ChildSpec("e", Echo)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.restart = "temporary"  # type: ignore[misc]
    assert spec == ChildSpec("e", Echo) and spec != ChildSpec("f", Echo)


def test_a_factory_is_a_valid_start() -> None:
    spec = ChildSpec("f", lambda: Echo.start())
    assert spec.type == "worker" and callable(spec.start)


@pytest.mark.parametrize(("options", "field"), [
    ({"id": None}, "id"),
    ({"id": ["unhashable"]}, "id"),
    ({"start": int}, "start"),
    ({"start": "Echo"}, "start"),
    ({"kwargs": [("k", 1)]}, "kwargs"),
    ({"restart": "sometimes"}, "restart"),
    ({"type": "manager"}, "type"),
    ({"shutdown": -1}, "shutdown"),
    ({"shutdown": math.inf}, "shutdown"),
    ({"shutdown": "gently"}, "shutdown"),
    ({"shutdown": True}, "shutdown"),
    ({"name": ""}, "name"),
    ({"name": 7}, "name"),
])
def test_bad_fields_raise_invalid_spec_error_naming_the_field(options: dict[str, Any],
                                                              field: str) -> None:
    fields = {"id": "child", "start": Echo, **options}
    with pytest.raises(InvalidSpecError) as caught:
        ChildSpec(**fields)
    error = caught.value
    assert error.field == field
    assert error.value is fields[field] or error.value == fields[field]
    assert isinstance(error, ValueError) and field in str(error)
    if field != "id":
        assert error.child_id == "child" and "'child'" in str(error)
    assert pykka.ActorRegistry.get_all() == []
