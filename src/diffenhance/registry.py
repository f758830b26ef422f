"""A registry of named plug-ins: one instance of each registered class under its `name`.

Formulations (`diffusion.formulations`) and restoration tasks (`restoration`) each keep one; a
new one is a class with a `name` and the `register` decorator, in its own file (or a test's)."""

from __future__ import annotations

from typing import Any, TypeVar

C = TypeVar("C", bound=type)


class Registry(dict[str, Any]):
    """name -> the instance of the class registered under it, in registration order."""

    def register(self, cls: C) -> C:
        """Class decorator: register one instance of `cls` under `cls.name` (replacing a previous
        class of that name, so a re-imported module re-registers cleanly)."""
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"{cls.__name__}.name must be an identifier string, got {name!r}")
        self[name] = cls()
        return cls

    def unregister(self, name: str) -> None:
        """Remove a registered class (tests that register a toy one clean up with this)."""
        self.pop(name, None)

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self)
