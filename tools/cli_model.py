"""amber's command line as plain data, read from its argparse parser: the one source that the
man page and the shell completions are generated from, so that neither can drift from it."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]  # long first: ("--continue", "-c")
    dest: str
    help: str
    metavar: str | None  # None: a switch that takes no value
    optional_value: bool  # nargs="?": the value may be left out
    choices: tuple[str, ...]
    is_path: bool


@dataclass(frozen=True)
class Positional:
    dest: str
    metavar: str
    help: str
    nargs: str | int | None  # argparse's: None (one), "?", "+", "*", "..." (the rest)
    choices: tuple[str, ...]
    is_path: bool

    @property
    def repeats(self) -> bool:
        return self.nargs in ("+", "*", argparse.REMAINDER)

    @property
    def optional(self) -> bool:
        return self.nargs in ("?", "*")


@dataclass(frozen=True)
class Command:
    path: tuple[str, ...]  # () for amber itself, ("livepatch", "apply") for a nested verb
    aliases: tuple[str, ...]
    help: str
    description: str
    options: tuple[Option, ...]
    positionals: tuple[Positional, ...]
    subcommands: tuple[Command, ...]

    @property
    def name(self) -> str:
        return " ".join(("amber", *self.path))

    def walk(self) -> list[Command]:
        """This command and every command below it, parents first."""
        found = [self]
        for sub in self.subcommands:
            found += sub.walk()
        return found


def amber_parser() -> argparse.ArgumentParser:
    """The parser of this checkout's amber (not of an amber installed elsewhere)."""
    src = str(REPO / "src")
    if src not in sys.path:
        sys.path.insert(0, src)
    from amber.cli import build_parser

    return build_parser()


def _text(value: str | None) -> str:
    return "" if value in (None, argparse.SUPPRESS) else str(value)


def _metavar(action: argparse.Action) -> str:
    if isinstance(action.metavar, str):
        return action.metavar
    if action.choices is not None:
        return "{" + ",".join(str(c) for c in action.choices) + "}"
    return action.dest.upper()


def _option(action: argparse.Action) -> Option:
    flags = tuple(sorted(action.option_strings, key=lambda f: (not f.startswith("--"), f)))
    takes_value = action.nargs != 0
    return Option(flags=flags, dest=action.dest, help=_text(action.help),
                  metavar=_metavar(action) if takes_value else None,
                  optional_value=action.nargs == "?",
                  choices=tuple(str(c) for c in action.choices or ()),
                  is_path=action.type is Path)


def _positional(action: argparse.Action) -> Positional:
    return Positional(dest=action.dest, metavar=_metavar(action), help=_text(action.help),
                      nargs=action.nargs, choices=tuple(str(c) for c in action.choices or ()),
                      is_path=action.type is Path)


def command(parser: argparse.ArgumentParser, path: tuple[str, ...] = (), help: str = "",
            aliases: tuple[str, ...] = ()) -> Command:
    options: list[Option] = []
    positionals: list[Positional] = []
    subcommands: list[Command] = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue
        if isinstance(action, argparse._SubParsersAction):
            subcommands += _subcommands(action, path)
        elif action.option_strings:
            options.append(_option(action))
        else:
            positionals.append(_positional(action))
    return Command(path=path, aliases=aliases, help=help, description=_text(parser.description),
                   options=tuple(options), positionals=tuple(positionals),
                   subcommands=tuple(subcommands))


def _subcommands(action: argparse._SubParsersAction[argparse.ArgumentParser],
                 path: tuple[str, ...]) -> list[Command]:
    found = []
    for choice in action._choices_actions:
        name = choice.dest
        parser = action.choices[name]
        aliases = tuple(other for other, p in action.choices.items()
                        if p is parser and other != name)
        found.append(command(parser, (*path, name), _text(choice.help), aliases))
    return found


def model() -> Command:
    return command(amber_parser())


def verbs(root: Command) -> dict[str, Command]:
    """Every verb and nested verb by its path as typed ("livepatch apply"), aliases included."""
    found: dict[str, Command] = {}
    for cmd in root.walk()[1:]:
        parent = " ".join(cmd.path[:-1])
        for name in (cmd.path[-1], *cmd.aliases):
            found[f"{parent} {name}".strip()] = cmd
    return found
