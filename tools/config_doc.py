"""The keys of /etc/amber/amber.conf, their defaults and what they mean, read from amber.config:
the dataclasses give the sections, keys and defaults, the comment after each field its meaning.
The man page and the packaged example configuration are generated from this."""

from __future__ import annotations

import dataclasses
import inspect
import io
import json
import tokenize
from dataclasses import dataclass

from tools.cli_model import amber_parser


@dataclass(frozen=True)
class Key:
    name: str
    default: str  # as TOML
    meaning: str


@dataclass(frozen=True)
class Section:
    name: str
    keys: tuple[Key, ...]


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    raise TypeError(f"no TOML rendering for {value!r}")


def field_comments(cls: type) -> dict[str, str]:
    """The comment on the line of each field of a dataclass's source."""
    comments: dict[str, str] = {}
    lines: dict[int, str] = {}
    source = inspect.getsource(cls)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.NAME and token.start[0] not in lines and token.start[1] == 4:
            lines[token.start[0]] = token.string
        elif token.type == tokenize.COMMENT and token.start[0] in lines:
            comments[lines[token.start[0]]] = token.string.lstrip("#").strip()
    return comments


def sections() -> tuple[Section, ...]:
    amber_parser()  # puts this checkout's src on sys.path
    from amber import config

    found: list[Section] = []
    for section in dataclasses.fields(config.Config):
        cls = section.default_factory
        assert isinstance(cls, type), section
        comments = field_comments(cls)
        keys = []
        for key in dataclasses.fields(cls):
            if key.name not in comments:
                raise SystemExit(f"amber.config.{cls.__name__}.{key.name} has no comment: "
                                 "the comment after a field is its documentation")
            keys.append(Key(key.name, toml_value(key.default), comments[key.name]))
        found.append(Section(section.name, tuple(keys)))
    return tuple(found)


def example_conf() -> str:
    """/usr/share/doc/amber/examples/amber.conf: every key with its default, explained."""
    lines = [
        "# amber's configuration: /etc/amber/amber.conf of the system root (TOML).",
        "#",
        "# Every key is shown with its default: a missing file or key means the default.",
        "# /etc is part of the read-only snapshot, so change this file in a transaction:",
        "#   amber run -- cp /usr/share/doc/amber/examples/amber.conf /etc/amber/amber.conf",
        "# and edit it with 'amber shell'. See amber(8), CONFIGURATION.",
    ]
    for section in sections():
        lines += ["", f"[{section.name}]"]
        for key in section.keys:
            lines += [f"# {key.meaning}", f"{key.name} = {key.default}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(example_conf(), end="")
