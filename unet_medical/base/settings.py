"""Typed settings: the flags of one stage as a frozen dataclass that validates itself once.

A stage (data, model, training, inference, export, ...) declares its settings with `setting(...)`: a
default, the help text its flag shows, and the rule a value must meet. `Settings.__post_init__` checks
every field's rule, then the stage's own cross-field `check()`, and raises one UNetError naming the flag.
The command line (unet_medical.cli.config) builds its flags, its --help groups and config.yaml's
sections from these classes; nothing here knows any stage.

    @dataclasses.dataclass(frozen=True)
    class TrainingConfig(Settings):
        section = "training"
        batch_size: int = setting(1, "images per step", rule=at_least(1))
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Iterable

from unet_medical.base.errors import UNetError


@dataclasses.dataclass(frozen=True)
class Rule:
    """A predicate on a value and the words that say what it expects ("an integer >= 1")."""

    holds: Callable[[Any], bool]
    expected: str


def at_least(low: float, kind: str = "an integer") -> Rule:
    return Rule(lambda v: v >= low, f"{kind} >= {low:g}")


def between(low: float, high: float, kind: str = "an integer", high_open: bool = False) -> Rule:
    if high_open:
        return Rule(lambda v: low <= v < high, f"{kind} in [{low:g}, {high:g})")
    return Rule(lambda v: low <= v <= high, f"{kind} from {low:g} to {high:g}")


def above(low: float, kind: str = "a number") -> Rule:
    return Rule(lambda v: v > low, f"{kind} > {low:g}")


Choices = Iterable[str] | Callable[[], Iterable[str]]


def setting(default: Any, help: str, *, rule: Rule | None = None, choices: Choices | None = None,
            flag: bool = True) -> Any:
    """A dataclass field that is a flag: `--name` with `help`, its `choices` and `rule`. `choices` may be a
    registry's `names` (called when flags are parsed and checked, so names a plugin registers count).
    A None value means "not given / chosen elsewhere": rules and choices apply only to other values.
    `flag=False`: a setting the command line derives (recorded in config.yaml, never typed)."""
    if choices is not None and not callable(choices):
        choices = tuple(choices)
    return dataclasses.field(default=default, metadata={"help": help, "rule": rule, "choices": choices,
                                                        "flag": flag})


def field_choices(f: dataclasses.Field) -> tuple[str, ...] | None:
    """The allowed values of a settings field (None: any)."""
    choices = f.metadata.get("choices")
    return tuple(choices()) if callable(choices) else choices


def fail(flag: str, value: Any, expected: str) -> None:
    """Raise the one-line error every settings check uses: `--flag=value: expected ...`."""
    raise UNetError(f"--{flag}={value!r}: expected {expected}")


def require(condition: bool, flag: str, value: Any, expected: str) -> None:
    if not condition:
        fail(flag, value, expected)


class Settings:
    """Mixin of a frozen settings dataclass: each field's rule and choices, then `check()`, at construction."""

    section: ClassVar[str] = ""  # the --help group and config.yaml section of this stage
    title: ClassVar[str] = ""  # the --help group's heading

    def __post_init__(self) -> None:
        validate_fields(self, dataclasses.fields(self))
        self.check()

    def check(self) -> None:
        """Rules between fields of this stage (override); each failure raises via `require`/`fail`."""

    @classmethod
    def from_values(cls, values: Any) -> "Settings":
        """This stage's settings out of an object that holds (at least) its fields, or a mapping (missing
        keys take the defaults)."""
        if isinstance(values, dict):
            return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})
        return cls(**{f.name: getattr(values, f.name) for f in dataclasses.fields(cls)})


def validate_fields(obj: Any, fields: Iterable[dataclasses.Field]) -> None:
    """Check `obj`'s value of each field against the field's choices and rule (None always passes)."""
    for f in fields:
        value = getattr(obj, f.name)
        if value is None:
            continue
        choices = field_choices(f)
        if choices is not None and value not in choices:
            fail(f.name, value, f"one of {', '.join(choices)}")
        rule = f.metadata.get("rule")
        if rule is not None:
            try:
                ok = rule.holds(value)
            except TypeError:
                ok = False
            if not ok:
                fail(f.name, value, rule.expected)
