"""Command-line parse errors as one line: ``evaluate.py: error: --runtime.batch_sise: unknown option (did you mean
--runtime.batch_size?)`` instead of jsonargparse's usage dump.

:func:`one_line_parse_errors` makes a parser (and its subcommands) raise instead of printing its usage and exiting,
and turns jsonargparse's message into a :class:`CommandLineError` that names the option (``--group.name``, as typed)
and, for a near miss, the closest valid spelling (``difflib``); the entry points print it as any user error. The
same command line fails the same way on every process of a launched run, so only process 0 prints it.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator

from jsonargparse import ArgumentError, ArgumentParser

from odin_pl.errors import UserError, did_you_mean


class CommandLineError(UserError):
    """An option, config file or subcommand that the parser refuses; the same on every process."""

    same_on_every_process = True


def _parsers(parser: ArgumentParser) -> list[ArgumentParser]:
    """``parser`` and its subcommands' parsers, recursively."""
    action = getattr(parser, "_subcommands_action", None)
    children = list(getattr(action, "_name_parser_map", {}).values()) if action is not None else []
    return [parser, *(p for child in children for p in _parsers(child))]


def _flags(parsers: list[ArgumentParser]) -> list[str]:
    return sorted({flag for p in parsers for a in p._actions for flag in a.option_strings if flag.startswith("--")})


def _key_problem(key: str, body: list[str]) -> str:
    """``Parser key "KEY": ...`` lines (a value of the wrong type, a file that does not exist ...) as one clause."""
    given = next((line.split(":", 1)[1].strip() for line in body if line.startswith("Given value:")), None)
    reasons = [line[2:] for line in body if line.startswith("- ") and "NoneType" not in line]
    if reasons:  # a union: the reasons of its real types
        return f"{'; '.join(reasons)} (got {given!r})"
    text = " ".join(body)
    literal = re.search(r"Expected a typing\.Literal\[(.*)\]\. Got value: (.*)$", text)
    if literal:
        choices = re.findall(r"'([^']*)'", literal.group(1))
        return f"must be one of {', '.join(choices)}, got {literal.group(2)!r}{did_you_mean(literal.group(2), choices)}"
    text = re.sub(r"<class '(?:\w+\.)*(\w+)'>", r"\1", text)
    typed = re.search(r"Expected a (.*)\. Got value: (.*)$", text)
    return f"expected {typed.group(1)}, got {typed.group(2)!r}" if typed else text


def describe(message: str, parser: ArgumentParser) -> str:
    """jsonargparse's (possibly multi-line) error ``message`` as one line that names the option."""
    parsers = _parsers(parser)
    flags, subcommands = _flags(parsers), [p.prog.split()[-1] for p in parsers[1:]]
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    first = lines[0] if lines else message
    if first.startswith("unrecognized arguments:"):
        tokens = first.split(":", 1)[1].split()
        unknown = [token.split("=")[0] for token in tokens if token.startswith("-")]
        if unknown:
            return "; ".join(f"{flag}: unknown option{did_you_mean(flag, flags)}" for flag in unknown) + \
                " (see --help)"
        return f"unexpected argument(s) {' '.join(tokens)}{did_you_mean(tokens[0], subcommands)} (see --help)"
    config_key = re.match(r"Subcommand '\w+' does not accept option '([^']+)'", first) or \
        re.match(r".*does not accept (?:option|key) '([^']+)'", first)
    if config_key:
        keys = [flag[2:] for flag in flags]
        return f"--config: unknown key {config_key.group(1)!r}{did_you_mean(config_key.group(1), keys)}"
    key = re.match(r'Parser key "([^"]+)":\s*(.*)$', first)
    if key:
        name = key.group(1)
        name = name.split(".", 1)[1] if name.split(".")[0] in subcommands and "." in name else name
        return f"--{name}: {_key_problem(name, [key.group(2), *lines[1:]] if key.group(2) else lines[1:])}"
    if first.startswith("Problems parsing config"):
        return f"--config: the file is not valid YAML or JSON ({' '.join(lines)[len('Problems parsing config: '):]})"
    choice = re.match(r"argument (\S+): invalid choice: '([^']*)' \(choose from (.*)\)", first)
    if choice:
        what = "subcommand" if choice.group(1) == "command" else choice.group(1)
        options = re.findall(r"'([^']*)'", choice.group(3))
        return f"unknown {what} {choice.group(2)!r}{did_you_mean(choice.group(2), options)}; choose from " \
               f"{', '.join(options)}"
    required = re.match(r"the following arguments are required: (.*)$", first)
    if required:
        names = [name.split(".", 1)[1] if name.split(".")[0] in subcommands else name
                 for name in re.split(r",\s*", required.group(1))]
        return f"missing required option(s): {', '.join('--' + n if not n.startswith('-') else n for n in names)}"
    argument = re.match(r"argument (--\S+): (.*)$", first)
    if argument:
        return f"{argument.group(1)}: {argument.group(2)}"
    return " ".join(lines)


@contextmanager
def one_line_parse_errors(parser: ArgumentParser) -> Iterator[None]:
    """Within the block, ``parser`` and its subcommands raise a :class:`CommandLineError` (see :func:`describe`)
    where they would print their usage and exit (afterwards they do as before)."""
    parsers = _parsers(parser)
    before = [p.exit_on_error for p in parsers]
    for p in parsers:
        p.exit_on_error = False
    try:
        yield
    except ArgumentError as err:
        raise CommandLineError(describe(str(err), parser)) from err
    finally:
        for p, exit_on_error in zip(parsers, before):
            p.exit_on_error = exit_on_error
