"""How a training option is declared: once, as a dataclass field whose metadata holds its help, flag and check.

The CLI's flags, the help's defaults, the placement set and the validation are all read from these declarations
(click's and Keras's way of stating a parameter once). No torch here: the CLI answers `--help` without it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import MnistCnnError


@dataclass(frozen=True)
class Check:
    """A rule for one value: `ok(value)` or the message "NAME must ..., got VALUE"."""

    ok: Callable[[Any], bool]
    must: str  # e.g. "must be a positive integer"


@dataclass(frozen=True)
class Option:
    """The declaration of one training option (a field's metadata["option"])."""

    help: str                      # the train flag's help; "{default}" marks where the default goes, else appended
    flags: tuple[str, ...] = ()    # the first is the flag's name; () = derived from the field's name
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    none_means: str | None = None  # what a None default does, shown as the default ("every core", say)
    checks: tuple[Check, ...] = ()
    placement: bool = False        # where a run trains, not what it trains: a resume may change it
    switch: bool = False           # a flag without a value that turns the default around (--no-cuda-graph)
    group: str | None = None       # flags of one group are mutually exclusive
    compound: tuple[str, ...] = () # set by these flags (the CLI combines them), not by a flag of its own
    cli: bool = True               # False: a Python-only setting
    elsewhere: Mapping[str, str] = dataclasses.field(default_factory=dict)  # other commands' help for the flag


def option(default: Any = None, help: str = "", *, factory: Callable[[], Any] | None = None,
           checks: Iterable[Check] = (), **declaration: Any) -> Any:
    """A TrainConfig field: its default, and everything the CLI, the help and the validation need to know."""
    meta = {"option": Option(help=help, checks=tuple(checks), **declaration)}
    return field(default_factory=factory, metadata=meta) if factory else field(default=default, metadata=meta)


def declaration(f: dataclasses.Field) -> Option:
    return f.metadata["option"]


def flag_of(f: dataclasses.Field) -> str:
    """The field's flag as a user types it (--batch-size; --no-cuda-graph for a switch that is on by default)."""
    opt = declaration(f)
    if opt.flags:
        return opt.flags[0]
    prefix = "--no-" if opt.switch and f.default is True else "--"
    return prefix + f.name.replace("_", "-")


def dest_of(f: dataclasses.Field) -> str:
    return flag_of(f).removeprefix("--").replace("-", "_")


def shown_default(f: dataclasses.Field, recipe: Mapping[str, Any], model: str) -> str:
    """The default as the help shows it: the default model's recipe value, what None means, or the value."""
    opt = declaration(f)
    if f.name in recipe:
        return f"default: the recipe's; {model} {_show(recipe[f.name])}"
    if f.default is None:
        return f"default: {opt.none_means}"
    return f"default {_show(f.default)}"


def help_text(f: dataclasses.Field, recipe: Mapping[str, Any], model: str) -> str:
    opt = declaration(f)
    if opt.switch:  # the flag itself says what it changes from the default
        return opt.help
    default = shown_default(f, recipe, model)
    if "{default}" in opt.help:
        return opt.help.format(default=default)
    return f"{opt.help} ({default})"


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


class OptionError(MnistCnnError):
    """A bad training option. The message names options as Python does (epochs); `as_flags()` as the CLI does
    (--epochs). `template` holds "{name}" for each option it names, and nothing else in braces."""

    def __init__(self, template: str, names: Callable[[str], str] | None = None):
        self.template = template
        super().__init__(template.format_map(_Names(names or (lambda name: name))))

    def as_flags(self, flags: Callable[[str], str]) -> str:
        return self.template.format_map(_Names(flags))


class _Names(dict):
    def __init__(self, name: Callable[[str], str]):
        super().__init__()
        self.name = name

    def __missing__(self, key: str) -> str:
        return self.name(key)


def escape(text: str) -> str:
    """Text (a value, a path) as it reads inside an OptionError template."""
    return text.replace("{", "{{").replace("}", "}}")


def literal(value: Any) -> str:
    return escape(repr(value))


def check(name: str, value: Any, rules: Iterable[Check]) -> None:
    for rule in rules:
        if not rule.ok(value):
            raise OptionError(f"{{{name}}} {rule.must}, got {literal(value)}")


# ---- the rules options share ----
def number(value: Any) -> bool:  # config.json and grid files can hold any JSON: compare numbers only
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def whole(value: Any) -> bool:  # True is an int to Python, not a count to a user
    return isinstance(value, int) and not isinstance(value, bool)


def optional(rule: Check) -> Check:
    return Check(lambda v: v is None or rule.ok(v), rule.must)


def one_of(values: Iterable[str], must: str | None = None) -> Check:
    values = tuple(values)
    return Check(lambda v: v in values, must or f"must be one of {', '.join(values)}")


POSITIVE = Check(lambda v: whole(v) and v >= 1, "must be a positive integer")
COUNT = Check(lambda v: whole(v) and v >= 0, "must be a whole number >= 0")
FINITE = Check(lambda v: number(v) and 0 <= v < float("inf"), "must be a finite number >= 0")


def interval(low: float, high: float, closed_high: bool = False, closed_low: bool = False) -> Check:
    def ok(v: Any) -> bool:
        return number(v) and (low <= v if closed_low else low < v) and (v <= high if closed_high else v < high)

    return Check(ok, f"must be in {'[' if closed_low else '('}{low:g}, {high:g}{']' if closed_high else ')'}")
