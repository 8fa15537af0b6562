"""Named extension points: a loss, a metric, an export format or a quantization mode is chosen by name.

A `Registry[T]` maps a name to an implementation. Entries are registered where they are defined, either
eagerly (the object itself) or lazily ("package.module:attribute", imported on first `get`), so listing
the names for `--help` and flag validation never imports TensorFlow. Plugins (unet_medical.cli.plugins)
register into the same registries before the flags are validated, so their names become valid choices.

    LOSSES = Registry("loss", flag="--loss")

    @LOSSES.register("mae")
    def mae(logits, labels, num_classes, **options): ...

    LOSSES.register_lazy("ce_dice", "unet_medical.training.losses:cross_entropy_dice_loss")
    loss_fn = LOSSES.get(cfg.loss)      # UNetError: --loss: unknown loss 'x' (choices: ce_dice, mae)
"""
from __future__ import annotations

import importlib
from typing import Callable, Generic, Iterator, TypeVar, overload

from unet_medical.base.errors import UNetError

T = TypeVar("T")


class _Lazy:
    """A "module:attribute" reference, imported when the entry is first asked for."""

    def __init__(self, target: str):
        module, sep, attribute = target.partition(":")
        if not sep or not module or not attribute:
            raise ValueError(f"lazy registry target {target!r}: expected 'package.module:attribute'")
        self.module, self.attribute = module, attribute

    def load(self) -> object:
        return getattr(importlib.import_module(self.module), self.attribute)


def resolve(reference: T | str) -> T:
    """An implementation given directly, or imported from its "package.module:attribute" string (the
    lazy form registration objects use for their hooks, e.g. an export format's writer)."""
    return _Lazy(reference).load() if isinstance(reference, str) else reference  # type: ignore[return-value]


class Registry(Generic[T]):
    """Name -> implementation, in registration order.

    Args:
        kind: what is registered, in singular ("loss"); used in error messages.
        flag: the command-line flag that chooses an entry ("--loss"), named by the unknown-name error.
    """

    def __init__(self, kind: str, flag: str):
        self.kind, self.flag = kind, flag
        self._entries: dict[str, T | _Lazy] = {}

    def _add(self, name: str, entry: T | _Lazy) -> None:
        if not isinstance(name, str) or not name:
            raise UNetError(f"{self.kind} registration: name {name!r} must be a non-empty string")
        if name in self._entries:
            raise UNetError(f"{self.flag}: {name!r} is already registered as a {self.kind}; "
                            "pick another name for the new one")
        self._entries[name] = entry

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, implementation: T) -> T: ...

    def register(self, name: str, implementation: T | None = None):  # type: ignore[no-untyped-def]
        """Register `implementation` under `name`; without it, return a decorator that does.

        Raises UNetError when `name` is taken (a plugin cannot silently replace a built-in).
        """
        if implementation is not None:
            self._add(name, implementation)
            return implementation

        def decorator(obj: T) -> T:
            self._add(name, obj)
            return obj

        return decorator

    def register_lazy(self, name: str, target: str) -> None:
        """Register "package.module:attribute", imported on the first `get(name)` (keeps heavy imports,
        TensorFlow above all, out of `--help`)."""
        self._add(name, _Lazy(target))

    def get(self, name: str) -> T:
        """The implementation of `name`; UNetError naming the flag and the choices if there is none."""
        if name not in self._entries:
            raise UNetError(f"{self.flag}: unknown {self.kind} {name!r} (choices: {', '.join(self._entries)})")
        entry = self._entries[name]
        if isinstance(entry, _Lazy):
            entry = self._entries[name] = entry.load()  # type: ignore[assignment]
        return entry  # type: ignore[return-value]

    def names(self) -> tuple[str, ...]:
        """Registered names in registration order; imports nothing."""
        return tuple(self._entries)

    def unregister(self, name: str) -> None:
        """Drop `name` (tests that register toy entries clean up with this)."""
        self._entries.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
