"""Replacing an attribute of a module, class or object, and putting the exact original back."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["Patch", "like"]

_ABSENT = object()


class Patch:
    """One attribute of one object (a driver module, a class, a dialect, a pool), replaced.

    ``make(patch)`` builds the replacement from ``patch.original``, what attribute
    lookup gave before (a bound method, for a method the object only has from
    its class).  A replacement that can stand aside calls ``patch.original``
    once ``patch.active`` is false.  The object is held weakly: a patch kept in
    a registry never keeps an engine's dialect or pool alive.
    """

    __slots__ = ("_owner", "active", "name", "original", "own", "replacement")

    def __init__(self, owner: Any, name: str, make: Callable[[Patch], Any]) -> None:
        self._owner = weakref.ref(owner)
        self.name = name
        # What the object itself held: for a class, the classmethod or function
        # in its own dict; usually nothing for an instance.
        self.own = vars(owner).get(name, _ABSENT)
        self.original: Any = getattr(owner, name)
        self.active = True
        self.replacement: Any = make(self)

    @property
    def has_own(self) -> bool:
        """Whether the object itself held the attribute, rather than only its class."""
        return self.own is not _ABSENT

    @property
    def owner(self) -> Any:
        """The patched object, or None once it is gone."""
        return self._owner()

    def install(self) -> None:
        owner = self._owner()
        if owner is not None:
            setattr(owner, self.name, self.replacement)

    def is_outermost(self) -> bool:
        """Whether ours is still the attribute (no other tool wrapped it since)."""
        owner = self._owner()
        return owner is not None and vars(owner).get(self.name) is self.replacement

    def remove(self) -> bool:
        """Stand aside, and put the original back if ours is still the attribute.

        Returns whether it was put back (an object that is gone counts as
        done).  When another tool has wrapped ours meanwhile, putting the
        original back would drop their wrapper: ours stays in their chain, as
        a pass-through where it checks ``active``.
        """
        self.active = False
        owner = self._owner()
        if owner is None:
            return True
        if vars(owner).get(self.name) is not self.replacement:
            return False
        if self.own is _ABSENT:
            delattr(owner, self.name)
        else:
            setattr(owner, self.name, self.own)
        return True


def like(function: Callable[..., Any], original: Callable[..., Any]) -> Callable[..., Any]:
    """Give a replacement the original's name, qualified name, docstring and ``__wrapped__``."""
    for name in ("__name__", "__qualname__", "__doc__"):
        with contextlib.suppress(AttributeError, TypeError):
            setattr(function, name, getattr(original, name))
    function.__wrapped__ = original  # type: ignore[attr-defined]
    return function
