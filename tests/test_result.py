"""zixir_actors.result: Ok and Err, the outcome of every sandboxed or supervised call."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from zixir_actors.errors import UnwrapError
from zixir_actors.result import Err, Ok, Result


def describe(result: Result[int, object]) -> str:
    match result:
        case Ok(value):
            return f"ok {value}"
        case Err(ValueError() as error):
            return f"value error {error}"
        case Err(error):
            return f"err {error}"
    return "unreachable"


def test_results_are_pattern_matchable() -> None:
    assert describe(Ok(3)) == "ok 3"
    assert describe(Err(ValueError("bad"))) == "value error bad"
    assert describe(Err("plain")) == "err plain"


def test_keyword_patterns_match_the_fields() -> None:
    match Err(KeyError("k")):
        case Err(error=KeyError() as error):
            assert error.args == ("k",)
        case _:
            pytest.fail("keyword pattern did not match")


def test_ok_accessors() -> None:
    ok: Result[int, str] = Ok(2)
    assert ok.is_ok and not ok.is_err
    assert ok.unwrap() == 2
    assert ok.unwrap_or(9) == 2
    assert ok.map(lambda v: v * 10) == Ok(20)
    assert ok.map_err(str.upper) is ok
    with pytest.raises(UnwrapError) as info:
        ok.unwrap_err()
    assert info.value.result == ok


def test_err_accessors() -> None:
    err: Result[int, str] = Err("nope")
    assert err.is_err and not err.is_ok
    assert err.unwrap_or(9) == 9
    assert err.unwrap_err() == "nope"
    assert err.map(lambda v: v * 10) is err
    assert err.map_err(str.upper) == Err("NOPE")


def test_unwrap_of_err_raises_its_exception_or_unwrap_error() -> None:
    boom = RuntimeError("boom")
    with pytest.raises(RuntimeError) as raised:
        Err(boom).unwrap()
    assert raised.value is boom
    with pytest.raises(UnwrapError) as info:
        Err("not an exception").unwrap()
    assert info.value.result == Err("not an exception")
    assert "cannot unwrap" in str(info.value)


def test_results_are_frozen_slotted_values() -> None:
    ok = Ok([1])
    with pytest.raises(dataclasses.FrozenInstanceError):
        ok.value = [2]  # type: ignore[misc]
    assert not hasattr(ok, "__dict__")
    assert Ok(1) == Ok(1) and Ok(1) != Err(1) and Err("x") == Err("x")
    assert hash(Ok(1)) == hash(Ok(1))
    assert len({Ok(1), Ok(1), Err(1)}) == 2
    assert repr(Ok(1)) == "Ok(value=1)"
    assert repr(Err("e")) == "Err(error='e')"


def test_results_are_generic_at_run_time() -> None:
    assert Ok[int](1) == Ok(1)
    assert Err[str]("e") == Err("e")
    with pytest.raises(dataclasses.FrozenInstanceError):
        Ok(1).other = 2  # type: ignore[attr-defined]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del Err("e").error


def test_results_pickle() -> None:
    for result in (Ok({"a": 1}), Err(ValueError("x")), Err("text")):
        copy = pickle.loads(pickle.dumps(result))
        assert type(copy) is type(result)
        if isinstance(result, Err) and isinstance(result.error, Exception):
            assert type(copy.error) is ValueError and copy.error.args == ("x",)
        else:
            assert copy == result
