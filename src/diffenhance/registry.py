"""Registries of named plug-ins: one instance of each registered class under its `name`.

The ground floor of the package: it imports nothing of diffenhance, so code at any layer (the
config that validates a name, a network, a formulation) can ask a registry for names without
importing what registers into it. Each registry knows its home package and imports it the first
time it is asked (`names`, `lookup`), the way entry points are loaded; a new plug-in is a class
with a `name` and the `register` decorator, in its own file of that package (or a test's).

    FORMULATIONS: diffusion formulations (`diffusion.formulations`)
    TASKS:        restoration tasks (`restoration`)
    NETWORKS:     networks (`nn`: the U-Net at the output resolution, or on the LR grid)

A plug-in class may declare its own options as a nested frozen dataclass `Options`; params
then set them under `<section>.options.<name>` (config.PluginOptions).
"""

from __future__ import annotations

import importlib
from typing import Any, TypeVar

C = TypeVar("C", bound=type)


class Registry(dict[str, Any]):
    """name -> the instance of the class registered under it, in registration order."""

    def __init__(self, what: str, home: str) -> None:
        super().__init__()
        self.what = what  # 'formulation', 'task', 'network': for messages
        self.home = home  # the package whose import registers the built-ins
        self._loaded = False

    def load(self) -> None:
        """Import the home package once (its modules register the built-ins)."""
        if not self._loaded:
            self._loaded = True  # first: the package's own import may ask again
            importlib.import_module(self.home)

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
        self.load()
        return tuple(self)

    def lookup(self, name: str) -> Any:
        """The instance registered under `name`; ValueError listing the registered names."""
        self.load()
        try:
            return self[name]
        except KeyError:
            known = ", ".join(map(repr, self))
            raise ValueError(f"unknown {self.what} {name!r}; registered: {known}") from None


FORMULATIONS = Registry("formulation", "diffenhance.diffusion.formulations")
TASKS = Registry("task", "diffenhance.restoration")
NETWORKS = Registry("network", "diffenhance.nn")
