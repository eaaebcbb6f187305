"""Command-line flags declared once, on a benchmark's argument dataclass.

A field declared with ``arg(default, "help")`` is also a flag: ``text_field`` is
``--text-field``; a bool that defaults to True is ``--no-<name>``, one that defaults to False
``--<name>``; ``flag=`` names it otherwise. Its type says how the text is read:
``tuple[float, ...]`` and ``list[str]`` are comma-separated (``''`` is an empty sweep), a
``Path`` flag given ``''`` is None. Fields declared without ``arg`` are not flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
_KEY = "flag"


def arg(
    default: Any,
    help: str | None = None,
    *,
    flag: str | None = None,
    choices: Sequence[str] | None = None,
    exclusive: str | None = None,
) -> Any:
    """A dataclass field that is also the flag ``--<flag>``; fields sharing an ``exclusive``
    name are mutually exclusive on the command line."""
    meta = {"help": help, "flag": flag, "choices": choices, "exclusive": exclusive}
    return dataclasses.field(default=default, metadata={_KEY: meta})


def add_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One option on ``parser`` per ``arg`` field of the dataclass ``cls``, in field order."""
    hints = typing.get_type_hints(cls)
    groups: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata.get(_KEY)
        if meta is None:
            continue
        where: Any = parser
        if meta["exclusive"]:
            if meta["exclusive"] not in groups:
                groups[meta["exclusive"]] = parser.add_mutually_exclusive_group()
            where = groups[meta["exclusive"]]
        kind, name = hints[f.name], meta["flag"] or f.name.replace("_", "-")
        if kind is bool:
            name = meta["flag"] or (f"no-{name}" if f.default else name)
            action = "store_false" if f.default else "store_true"
            where.add_argument(f"--{name}", dest=f.name, action=action, help=meta["help"])
            continue
        where.add_argument(
            f"--{name}",
            dest=f.name,
            type=_reader(kind),
            default=f.default,
            choices=meta["choices"],
            metavar=None if meta["choices"] else name.upper().replace("-", "_"),
            help=meta["help"],
        )


def from_flags(cls: type[T], ns: argparse.Namespace) -> T:
    """The dataclass ``cls`` from a command line parsed with ``add_flags(parser, cls)``."""
    names = [f.name for f in dataclasses.fields(cls) if _KEY in f.metadata]  # type: ignore[arg-type]
    return cls(**{name: getattr(ns, name) for name in names})


class LazyParser(argparse.ArgumentParser):
    """A subcommand's parser whose flags come from ``module:Dataclass``, imported only when
    that subcommand is parsed: the benchmarks' modules take seconds to import."""

    def __init__(self, *args: Any, flags: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.flags = flags

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self.flags:
            module, _, name = self.flags.partition(":")
            self.flags = None
            add_flags(self, getattr(importlib.import_module(module), name))
        return super().parse_known_args(args, namespace)


def _reader(kind: Any) -> Callable[[str], Any] | type:
    """How the text of a flag of this type is read."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    origin, inner = typing.get_origin(kind), typing.get_args(kind)
    if origin is tuple:
        return _comma_separated(inner[0])
    if origin is list:
        return lambda text: text.split(",") if text else None
    if kind is Path:
        return lambda text: Path(text) if text else None
    return kind  # str, int, float: argparse names them in its errors


def _comma_separated(kind: type) -> Callable[[str], tuple[Any, ...]]:
    def read(text: str) -> tuple[Any, ...]:
        try:
            return tuple(kind(x) for x in text.split(",") if x.strip())
        except ValueError:
            msg = f"expected comma-separated numbers: {text!r}"
            raise argparse.ArgumentTypeError(msg) from None

    return read
