"""Replacing a driver's attribute (its connect) and putting the exact original back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Patch", "like"]

_ABSENT = object()


class Patch:
    """One attribute of a module or class, replaced while instrumented.

    ``make(patch)`` builds the replacement; it must call ``patch.original``
    when ``patch.active`` is false.  Removing the patch puts the original object
    back (or deletes the attribute, if the class only inherited it) when ours
    is still the attribute.  When another tool has wrapped ours meanwhile,
    putting the original back would drop their wrapper, so ours stays in their
    chain as a pass-through instead.
    """

    def __init__(self, owner: Any, name: str, make: Callable[[Patch], Any]) -> None:
        self.owner = owner
        self.name = name
        self.own = vars(owner).get(name, _ABSENT)
        # The object to call: what attribute lookup gives now (for a class,
        # the bound classmethod or the inherited function).
        self.original: Any = getattr(owner, name)
        self.active = True
        self.replacement = make(self)

    def install(self) -> None:
        setattr(self.owner, self.name, self.replacement)

    def remove(self) -> None:
        self.active = False
        if vars(self.owner).get(self.name) is not self.replacement:
            return
        if self.own is _ABSENT:
            delattr(self.owner, self.name)
        else:
            setattr(self.owner, self.name, self.own)


def like(function: Callable[..., Any], original: Callable[..., Any]) -> Callable[..., Any]:
    """Give a replacement the original's name, qualified name, docstring, and __wrapped__."""
    function.__name__ = getattr(original, "__name__", function.__name__)
    function.__qualname__ = getattr(original, "__qualname__", function.__qualname__)
    function.__doc__ = original.__doc__
    function.__wrapped__ = original  # type: ignore[attr-defined]
    return function
