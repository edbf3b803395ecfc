"""Comparing what a counted driver does with what the raw driver does, call by call."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import querymeter

QUERYMETER = Path(querymeter.__file__).resolve().parent
# The pure-Python core stands in for the C core, which adds no frame of its own.
PURE_PYTHON_CORE = QUERYMETER / "core" / "_py.py"


def outcome(action: Callable[[], Any], cursor_types: tuple[type, ...]) -> tuple[Any, ...]:
    """What an action gave: its result (any cursor as such), or its exception's type and message.

    Cursors are compared as "a cursor": a counted connection's cursor may be a
    different object of a subclass, which is the point.
    """
    try:
        result = action()
    except Exception as exc:
        message = str(exc).splitlines()
        return ("raised", type(exc), message[0] if message else "")
    if isinstance(result, cursor_types):
        return ("returned a cursor",)
    return ("returned", result)


def hook_frames(exc: BaseException) -> list[str]:
    """The frames of querymeter's hooks in an exception's traceback, as "file:function".

    The pure-Python core's own frames are left out: they stand in for the C
    core's calls, which add none.
    """
    frames = []
    traceback = exc.__traceback__
    while traceback is not None:
        code = traceback.tb_frame.f_code
        path = Path(code.co_filename).resolve()
        if path.is_relative_to(QUERYMETER) and path != PURE_PYTHON_CORE:
            frames.append(f"{path.name}:{code.co_name}")
        traceback = traceback.tb_next
    return frames


class HookedClasses:
    """Classes of an application's that watch for code run on their behalf.

    ``Base.__init_subclass__`` requires a keyword and records every subclass;
    the metaclass records each class it makes and initialises, and each time
    one of its classes is named as an attribute of another class.  Whatever
    querymeter does with ``Application`` (a subclass of ``base``) must leave
    ``made``, ``registry`` and ``Base.__subclasses__()`` as they were.
    """

    def __init__(self, base: type, name: str = "Application") -> None:
        made: list[str] = []
        registry: list[type] = []

        class Recording(type):
            def __new__(mcls, name: str, bases: Any, namespace: Any, **kwargs: Any) -> Any:
                made.append(f"new {name}")
                return super().__new__(mcls, name, bases, namespace, **kwargs)

            def __init__(cls, name: str, bases: Any, namespace: Any, **kwargs: Any) -> None:
                made.append(f"init {name}")
                super().__init__(name, bases, namespace, **kwargs)

            def __set_name__(cls, owner: type, name: str) -> None:
                made.append(f"named {cls.__name__} {name} of {owner.__name__}")

        metaclass = Recording if type(base) is type else type(base)

        class Base(base, metaclass=metaclass):  # type: ignore[misc,valid-type]
            def __init_subclass__(cls, *, table: str, **kwargs: Any) -> None:
                super().__init_subclass__(**kwargs)
                registry.append(cls)

        application = type(Base)(name, (Base,), {"__module__": __name__}, table="item")
        self.made = made
        self.registry = registry
        self.Base = Base
        self.Application: Any = application
        self.before = self.state()

    def state(self) -> tuple[list[str], list[type], list[type]]:
        """What the application's classes have seen: made, registered, subclassed."""
        return (list(self.made), list(self.registry), self.Base.__subclasses__())
