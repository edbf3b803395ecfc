"""The C module's stub, the C module and the Python twin agree on every name and signature."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from querymeter.core import _py as _core_py

from ..conftest import load_meter_class

STUB = Path(_core_py.__file__).with_name("_c.pyi")


def stub_classes() -> dict[str, dict[str, ast.FunctionDef]]:
    """Each class of the stub with its functions (properties included) by name."""
    tree = ast.parse(STUB.read_text())
    classes = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            classes[node.name] = {
                item.name: item for item in node.body if isinstance(item, ast.FunctionDef)
            }
    return classes


def stub_parameters(function: ast.FunctionDef) -> list[tuple[str, str, str | None]]:
    """(name, kind, default) of each parameter in a stub function."""
    args = function.args
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + [
        ast.unparse(d) for d in args.defaults
    ]
    params = [(a.arg, "positional", d) for a, d in zip(positional, defaults, strict=True)]
    if args.vararg is not None:
        params.append((args.vararg.arg, "*", None))
    params += [
        (a.arg, "keyword", None if d is None else ast.unparse(d))
        for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)
    ]
    if args.kwarg is not None:
        params.append((args.kwarg.arg, "**", None))
    return params


def twin_parameters(function: object) -> list[tuple[str, str, str | None]]:
    """(name, kind, default) of each parameter of a twin function."""
    params = []
    for p in inspect.signature(function).parameters.values():  # type: ignore[arg-type]
        kinds = {p.KEYWORD_ONLY: "keyword", p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}
        kind = kinds.get(p.kind, "positional")
        default = None if p.default is p.empty else repr(p.default)
        params.append((p.name, kind, default))
    return params


def test_the_stub_and_the_python_twin_define_the_same_api() -> None:
    """Every stub class and function exists in the twin with the same parameters."""
    for class_name, functions in stub_classes().items():
        twin = getattr(_core_py, class_name)
        for name, function in functions.items():
            member = inspect.getattr_static(twin, name)
            if isinstance(member, property):
                assert any(
                    isinstance(d, ast.Name) and d.id == "property" for d in function.decorator_list
                ), f"{class_name}.{name} is a property in the twin only"
                continue
            assert stub_parameters(function) == twin_parameters(member), f"{class_name}.{name}"
        twin_names = {
            name
            for name, value in vars(twin).items()
            if callable(value) or isinstance(value, property)
        } - {"__new__", "__slots__", "__repr__"}
        stub_names = set(functions)
        helpers = {
            n for n in twin_names - stub_names if n.startswith("_") and not n.startswith("__")
        }
        assert twin_names - helpers == stub_names | ({"__init__"} & twin_names), class_name


def test_the_c_module_has_every_name_of_the_stub() -> None:
    """Every class and function of the stub exists on the compiled module."""
    load_meter_class("c")
    from querymeter.core import _c as _core

    for class_name, functions in stub_classes().items():
        c_class = getattr(_core, class_name)
        for name in functions:
            assert hasattr(c_class, name), f"{class_name}.{name} missing in C"


@pytest.mark.parametrize(
    "name", ["MeterCore", "Token", "Tracker", "Occupancies", "Statements", "Sampling", "Scope"]
)
def test_the_c_module_and_the_twin_share_their_docstrings(name: str) -> None:
    """Each C type documents itself as its twin does."""
    load_meter_class("c")
    from querymeter.core import _c as _core

    assert inspect.getdoc(getattr(_core, name)) == inspect.getdoc(getattr(_core_py, name))


def test_the_module_functions_of_the_stub_exist_in_both_cores() -> None:
    """The stub's module-level functions (the kill switch, the scopes) are in the twin,
    with the same parameters, and in the C module."""
    load_meter_class("c")
    from querymeter.core import _c as _core

    functions = [
        node for node in ast.parse(STUB.read_text()).body if isinstance(node, ast.FunctionDef)
    ]
    assert {f.name for f in functions} >= {"_set_enabled", "_enabled", "_enter_scope"}
    for function in functions:
        assert stub_parameters(function) == twin_parameters(getattr(_core_py, function.name))
        assert callable(getattr(_core, function.name)), function.name
