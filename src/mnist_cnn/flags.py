"""The training flags of `train`, `ensemble` and `experiment`, generated from the TrainConfig declarations, and
the way back: the parsed flags as make_config's keywords. Nothing here is typed twice: flags, types, choices,
help and the defaults it shows all come from training/config.py."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable
from typing import Any

from .training.config import FIELDS, PLACEMENT, TrainConfig
from .training.options import declaration, dest_of, flag_of, help_text, shown_default
from .zoo import recipe_for

_TYPES = typing.get_type_hints(TrainConfig)


def add_model_options(p: argparse.ArgumentParser | Any) -> None:
    p.add_argument("--kernel-size", type=int, help="model option (keras-dropout): convolution kernel size")
    p.add_argument("--filters", type=int, help="model option (deotte): the first block's filters (default 32)")
    p.add_argument("--no-dropout", action="store_true", help="model option (keras-dropout, deotte): leave out "
                   "dropout")


def _add_augment_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rotation", type=float, help="augment: random rotation range in degrees")
    p.add_argument("--shift", type=float, help="augment: random width/height shift, a fraction of the size")
    p.add_argument("--shear", type=float, help="augment: random shear angle range in degrees")
    p.add_argument("--zoom", type=float, help="augment: random zoom range z (factor in [1-z, 1+z])")


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    options = {}
    for name in ("kernel_size", "filters"):
        if getattr(args, name, None) is not None:
            options[name] = getattr(args, name)
    if getattr(args, "no_dropout", False):
        options["dropout"] = False
    return options


def _augment(args: argparse.Namespace) -> dict[str, float] | None:
    if all(getattr(args, k) is None for k in ("rotation", "shift", "shear", "zoom")):
        return None
    return {"rotation": args.rotation or 0, "width_shift": args.shift or 0, "height_shift": args.shift or 0,
            "shear": args.shear or 0, "zoom": args.zoom or 0}


# the options that several flags set together: how to add the flags, and how to read them back
_COMPOUNDS: dict[str, tuple[Callable[[Any], None], Callable[[argparse.Namespace], Any]]] = {
    "model_options": (add_model_options, lambda args: model_options(args) or None),
    "augment": (_add_augment_options, _augment),
}


def _fields(command: str) -> list[dataclasses.Field]:
    """The options that `command` has flags for, in the declarations' order."""
    return [f for f in FIELDS.values() if declaration(f).cli
            and (command == "train" or command in declaration(f).elsewhere)]


def _help(f: dataclasses.Field, command: str) -> str:
    recipe = recipe_for(TrainConfig.model)
    own = declaration(f).elsewhere.get(command) if command != "train" else None
    if own is None:
        return help_text(f, recipe, TrainConfig.model)
    return own.format(default=shown_default(f, {}, TrainConfig.model))


def add_training_flags(p: argparse.ArgumentParser, command: str = "train") -> None:
    """The flags of every option that `command` takes."""
    groups: dict[str, Any] = {}
    for f in _fields(command):
        opt = declaration(f)
        if opt.compound:
            _COMPOUNDS[f.name][0](p)
            continue
        if opt.group and opt.group not in groups:
            groups[opt.group] = p.add_mutually_exclusive_group()
        target = groups[opt.group] if opt.group else p
        kwargs: dict[str, Any] = {"dest": dest_of(f), "help": _help(f, command)}
        if opt.switch:
            kwargs["action"] = "store_true"
        else:
            kind = next(t for t in typing.get_args(_TYPES[f.name]) or (_TYPES[f.name],) if t is not type(None))
            kwargs.update(type=kind if kind in (int, float) else None, choices=opt.choices, metavar=opt.metavar)
        target.add_argument(*(opt.flags or (flag_of(f),)), **kwargs)


def config_options(args: argparse.Namespace, command: str = "train") -> dict[str, Any]:
    """make_config's keywords from the parsed flags; None where a flag was not given."""
    options = {}
    for f in _fields(command):
        opt = declaration(f)
        if opt.compound:
            options[f.name] = _COMPOUNDS[f.name][1](args)
        elif opt.switch:  # given: the other way round from the default
            options[f.name] = (not f.default) if getattr(args, dest_of(f)) else None
        else:
            options[f.name] = getattr(args, dest_of(f))
    return options


def dests(names: typing.Iterable[str] | None = None) -> tuple[str, ...]:
    """The argparse names of the train flags that set `names` (every option when None)."""
    out: list[str] = []
    for f in _fields("train"):
        if names is None or f.name in names:
            out += declaration(f).compound or (dest_of(f),)
    return tuple(out)


TRAIN_DESTS = dests()
PLACEMENT_DESTS = dests(PLACEMENT)  # the flags a resume may change, with --epochs


def flag_name(name: str) -> str:
    """How the CLI names an option in an error (OptionError.as_flags)."""
    return flag_of(FIELDS[name]) if name in FIELDS else "--" + name.replace("_", "-")
