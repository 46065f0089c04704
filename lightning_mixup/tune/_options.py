"""The options of ``tune`` and ``compare``: one dataclass each (its docstring is the ``--help``).

A command's own flags are read by jsonargparse, the others go to LightningCLI. Besides
jsonargparse's spelling the flags take argparse's: ``--study-name``, ``--seeds 0 1``, ``--no-X``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import typing
from collections.abc import Sequence
from typing import TypeVar

__all__ = ["parse", "parse_error"]

T = TypeVar("T")


def _kinds(cls: type) -> dict[str, str]:
    """Each field of the dataclass ``cls``: ``list``, ``bool`` or ``value``."""
    hints = typing.get_type_hints(cls)
    kinds = {}
    for f in dataclasses.fields(cls):
        types = {hints[f.name], *typing.get_args(hints[f.name])}
        origins = {typing.get_origin(t) or t for t in types}
        kinds[f.name] = "list" if list in origins else "bool" if bool in origins else "value"
    return kinds


def _split(argv: Sequence[str], kinds: dict[str, str]) -> tuple[list[str], list[str]]:
    """``argv`` as the command's own arguments (for jsonargparse) and LightningCLI's."""
    mine: list[str] = []
    passthrough: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        flag, eq, value = token.partition("=")
        name = flag[2:].replace("-", "_") if flag.startswith("--") and "." not in flag else ""
        if token in ("-h", "--help"):
            mine.append(token)
            continue
        if name.startswith("no_") and kinds.get(name[3:]) == "bool" and not eq:
            mine.append(f"--{name[3:]}=false")
            continue
        if name not in kinds:
            passthrough.append(token)
            continue
        values = [value] if eq else []
        while not eq and i < len(argv) and not argv[i].startswith("--"):
            values.append(argv[i])
            i += 1
            if kinds[name] != "list":
                break
        if kinds[name] == "list" and not (len(values) == 1 and values[0].lstrip().startswith("[")):
            mine.append(f"--{name}={json.dumps(values)}")
        else:  # one value; without one, jsonargparse says it is missing
            mine.append(f"--{name}" + "".join(f"={v}" for v in values))
    return mine, passthrough


def parse_error(err: argparse.ArgumentError) -> str:
    """The message of jsonargparse on one line, naming the flag: ``--seeds: Expected ...``."""
    return re.sub(r'^Parser key "([^"]+)":', r"`--\1`:", " ".join(str(err).split()))


def parse(cls: type[T], argv: Sequence[str], prog: str, description: str) -> tuple[T, list[str]]:
    """The options ``cls`` (a dataclass) in ``argv``, and the arguments that go to LightningCLI.

    Raises:
        ValueError: On a value jsonargparse cannot read, in one line naming the flag.
        SystemExit: For ``--help``.
    """
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog=prog, description=description, exit_on_error=False)
    parser.add_class_arguments(cls, nested_key=None, fail_untyped=True)
    kinds = _kinds(cls)
    mine, passthrough = _split(argv, kinds)
    try:
        namespace = parser.parse_args(mine)
    except argparse.ArgumentError as err:
        raise ValueError(parse_error(err)) from None
    return cls(**{name: namespace[name] for name in kinds}), passthrough
