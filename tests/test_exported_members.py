"""Tests for the public namespace: ``__all__`` lists and the exception hierarchy."""

from __future__ import annotations

import inspect
from types import ModuleType

import pytest

import stagedroll
import stagedroll.cli
import stagedroll.exceptions
import stagedroll.patterns
import stagedroll.stores
import stagedroll.testing
import stagedroll.testing.strategies

PUBLIC_MODULES = [
    stagedroll,
    stagedroll.cli,
    stagedroll.exceptions,
    stagedroll.patterns,
    stagedroll.stores,
    stagedroll.testing,
    stagedroll.testing.strategies,
]
MODULE_IDS = [module.__name__ for module in PUBLIC_MODULES]


def exported(module: ModuleType) -> list[str]:
    """The module's ``__all__``, checked to be a list of strings."""
    names = module.__all__
    assert isinstance(names, list)
    assert all(isinstance(name, str) for name in names)
    return names


def defined_in_stagedroll(obj: object) -> bool:
    """Whether ``obj`` is a class or function defined in stagedroll or one of its modules."""
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        return False
    module = getattr(obj, "__module__", None)
    return isinstance(module, str) and (module == "stagedroll" or module.startswith("stagedroll."))


def public_definitions(module: ModuleType) -> set[str]:
    """Public attributes of ``module`` that are classes or functions defined in stagedroll."""
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and defined_in_stagedroll(value)
    }


def exception_classes(module: ModuleType) -> list[type[BaseException]]:
    """The exception classes that ``module`` exports."""
    return [
        value
        for value in (getattr(module, name) for name in exported(module))
        if inspect.isclass(value) and issubclass(value, BaseException)
    ]


EXCEPTIONS = sorted(
    {*exception_classes(stagedroll), *exception_classes(stagedroll.exceptions)},
    key=lambda cls: cls.__name__,
)


class TestAll:
    @pytest.mark.parametrize("module", PUBLIC_MODULES, ids=MODULE_IDS)
    def test_sorted(self, module: ModuleType) -> None:
        """__all__ is in sorted order."""
        names = exported(module)
        assert names == sorted(names)

    @pytest.mark.parametrize("module", PUBLIC_MODULES, ids=MODULE_IDS)
    def test_no_duplicates(self, module: ModuleType) -> None:
        """__all__ names every member once."""
        names = exported(module)
        assert len(names) == len(set(names))

    @pytest.mark.parametrize("module", PUBLIC_MODULES, ids=MODULE_IDS)
    def test_names_resolve(self, module: ModuleType) -> None:
        """Every name in __all__ is an attribute of the module."""
        missing = [name for name in exported(module) if not hasattr(module, name)]
        assert missing == []

    @pytest.mark.parametrize("module", PUBLIC_MODULES, ids=MODULE_IDS)
    def test_star_import(self, module: ModuleType) -> None:
        """A star import of the module binds exactly the names in __all__."""
        namespace: dict[str, object] = {}
        exec(f"from {module.__name__} import *", namespace)
        del namespace["__builtins__"]
        assert set(namespace) == set(exported(module))

    @pytest.mark.parametrize("module", PUBLIC_MODULES, ids=MODULE_IDS)
    def test_complete(self, module: ModuleType) -> None:
        """Every public class or function from stagedroll found on the module is listed."""
        unlisted = public_definitions(module) - set(exported(module))
        assert unlisted == set()

    def test_no_submodules_exported(self) -> None:
        """The top-level __all__ lists objects, not submodules such as exceptions or stores."""
        modules = [
            name
            for name in exported(stagedroll)
            if isinstance(getattr(stagedroll, name), ModuleType)
        ]
        assert modules == []

    def test_top_level_definitions_come_from_stagedroll(self) -> None:
        """Every class or function exported at the top level is defined in stagedroll."""
        members = {name: getattr(stagedroll, name) for name in exported(stagedroll)}
        foreign = [
            name
            for name, member in members.items()
            if (inspect.isclass(member) or inspect.isfunction(member))
            and not defined_in_stagedroll(member)
        ]
        assert foreign == []

    def test_version_exported(self) -> None:
        """__version__ is exported as a non-empty string."""
        assert "__version__" in exported(stagedroll)
        assert isinstance(stagedroll.__version__, str)
        assert stagedroll.__version__

    @pytest.mark.parametrize(
        "submodule",
        [stagedroll.exceptions, stagedroll.stores],
        ids=["stagedroll.exceptions", "stagedroll.stores"],
    )
    def test_reexports_are_the_same_objects(self, submodule: ModuleType) -> None:
        """A name exported both at the top level and by a submodule is the same object."""
        shared = set(exported(stagedroll)) & set(exported(submodule))
        assert shared
        for name in shared:
            assert getattr(stagedroll, name) is getattr(submodule, name), name


class TestExceptions:
    def test_root_is_an_exception(self) -> None:
        """StagedrollError is an Exception."""
        assert issubclass(stagedroll.StagedrollError, Exception)

    def test_policy_error_is_value_error(self) -> None:
        """PolicyError is a ValueError."""
        assert issubclass(stagedroll.PolicyError, ValueError)

    def test_unknown_rollout_error_is_lookup_error(self) -> None:
        """UnknownRolloutError is a LookupError."""
        assert issubclass(stagedroll.UnknownRolloutError, LookupError)

    def test_missing_extra_error_is_import_error(self) -> None:
        """MissingExtraError is an ImportError."""
        assert issubclass(stagedroll.exceptions.MissingExtraError, ImportError)

    @pytest.mark.parametrize("exception", EXCEPTIONS, ids=[cls.__name__ for cls in EXCEPTIONS])
    def test_derives_from_root(self, exception: type[BaseException]) -> None:
        """Every exported exception derives from StagedrollError."""
        assert issubclass(exception, stagedroll.StagedrollError)

    def test_every_exception_is_exported(self) -> None:
        """The exceptions module exports every exception class it defines."""
        defined = {
            name
            for name, value in vars(stagedroll.exceptions).items()
            if inspect.isclass(value)
            and issubclass(value, BaseException)
            and value.__module__ == "stagedroll.exceptions"
        }
        assert defined <= set(exported(stagedroll.exceptions))
        assert {"PolicyError", "StagedrollError", "StoreError", "TransitionError"} <= defined
