"""`Ok` and `Err`: the outcome of every sandboxed or supervised call.

Example:
    >>> from zixir_actors.result import Ok, Err
    >>> def describe(result):
    ...     match result:
    ...         case Ok(value):
    ...             return f"got {value}"
    ...         case Err(error):
    ...             return f"failed: {error}"
    >>> describe(Ok(3)), describe(Err("boom"))
    ('got 3', 'failed: boom')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import FrozenInstanceError, dataclass
from typing import Any, Generic, NoReturn, TypeVar

from zixir_actors.errors import UnwrapError

__all__ = ["Err", "Ok", "Result"]

T = TypeVar("T")
E = TypeVar("E")
U = TypeVar("U")


@dataclass(frozen=True, slots=True)
class Ok(Generic[T]):
    """A success holding `value`. Pattern-match with ``case Ok(value):``."""

    value: T

    @property
    def is_ok(self) -> bool:
        return True

    @property
    def is_err(self) -> bool:
        return False

    def unwrap(self) -> T:
        """Return the value."""
        return self.value

    def unwrap_or(self, default: Any) -> T:
        """Return the value (the default is ignored)."""
        return self.value

    def unwrap_err(self) -> NoReturn:
        """Raise `UnwrapError`: an `Ok` has no error."""
        raise UnwrapError(self)

    def map(self, fn: Callable[[T], U]) -> Ok[U]:
        """Return `Ok(fn(value))`."""
        return Ok(fn(self.value))

    def map_err(self, fn: Callable[[Any], Any]) -> Ok[T]:
        """Return self unchanged."""
        return self


@dataclass(frozen=True, slots=True)
class Err(Generic[E]):
    """A failure holding `error`. Pattern-match with ``case Err(error):``."""

    error: E

    @property
    def is_ok(self) -> bool:
        return False

    @property
    def is_err(self) -> bool:
        return True

    def unwrap(self) -> NoReturn:
        """Raise: the error itself if it is an exception, else `UnwrapError`."""
        if isinstance(self.error, BaseException):
            raise self.error
        raise UnwrapError(self)

    def unwrap_or(self, default: U) -> U:
        """Return `default`."""
        return default

    def unwrap_err(self) -> E:
        """Return the error."""
        return self.error

    def map(self, fn: Callable[[Any], Any]) -> Err[E]:
        """Return self unchanged: there is no value to map."""
        return self

    def map_err(self, fn: Callable[[E], U]) -> Err[U]:
        """Return `Err(fn(error))`."""
        return Err(fn(self.error))


def _frozen_setattr(self: object, name: str, value: Any) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self: object, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")


# The __setattr__ that dataclass generates for frozen slotted classes calls
# super() with the class as it was before slots were added, so any attribute
# it does not own raises TypeError instead of FrozenInstanceError; that breaks
# ``Ok[int](1)``, where typing sets ``__orig_class__`` and expects an
# AttributeError. Always refusing, with the documented error, fixes both.
for _cls in (Ok, Err):
    _cls.__setattr__ = _frozen_setattr  # type: ignore[method-assign]
    _cls.__delattr__ = _frozen_delattr  # type: ignore[method-assign]
del _cls

Result = Ok[T] | Err[E]
