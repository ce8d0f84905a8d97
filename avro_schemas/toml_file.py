"""Reading a TOML settings file so that any content at all gives a table or one clear line (issue 9).

The rules file of `watch` and the Kafka settings file are both TOML written by hand, so they meet
every kind of mistake: binary garbage, another encoding, a 5,000-digit number, brackets nested until
the parser's recursion gives up, a directory or `/dev/zero` named by accident. `tomllib` answers some
of these with exceptions that are not `TOMLDecodeError` (`UnicodeDecodeError`, `ValueError`,
`RecursionError`), and a program that catches only the documented one prints a traceback. `read_toml`
turns every one of them into the caller's one-line error, and `show` bounds what a message quotes
back from the file.

It lives beside the contract because both the consumers (rules) and the command line (Kafka settings)
read TOML, and the consumers may not import the command line's package.
"""

from __future__ import annotations

import os
import reprlib
import tomllib
from typing import Any

from avro_schemas.errors import TelemetryError

__all__ = ["MAX_TOML_BYTES", "display_path", "read_toml", "show"]

MAX_TOML_BYTES = 1 << 20
"""The largest settings file read (1 MiB): far above any real one, and it keeps `/dev/zero` from filling memory."""

# Values quoted back in messages: a few levels and a few dozen characters, whatever the file holds
# (a repr of a 4,000-digit number or of a table nested 1,000 deep would be neither short nor safe).
_SHOWN = reprlib.Repr()
_SHOWN.maxlevel = 2
_SHOWN.maxstring = 60
_SHOWN.maxlong = 40
_SHOWN.maxother = 60
_SHOWN.maxdict = _SHOWN.maxlist = _SHOWN.maxtuple = 4


def show(value: Any) -> str:
    """A short repr of a value read from a file, for an error message: at most a few dozen characters
    and two levels deep, never raising."""
    return _SHOWN.repr(value)


def display_path(path: str | os.PathLike[str]) -> str:
    """The path as a message shows it: as given, or as a repr when it is empty or holds characters (a
    newline, an escape) that would break the message's single line."""
    text = os.fspath(path)
    return text if text and text.isprintable() else repr(text)


def read_toml(path: str | os.PathLike[str], error: type[TelemetryError], what: str) -> dict[str, Any]:
    """The top-level table of the TOML file at `path`; any problem raises `error` with one line that
    names the file and says what is wrong.

    `what` names the file's role in messages ("rules file", "Kafka settings"). A UTF-8 byte-order mark
    is accepted (some editors write one). The messages quote positions, never the file's text, so a
    secret in a broken file does not leak through them.
    """
    source = display_path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_TOML_BYTES + 1)
    except OSError as exc:
        raise error(f"{source}: cannot read {what}: {exc.strerror or type(exc).__name__}") from None
    except ValueError as exc:  # an embedded NUL in the path
        raise error(f"{source}: cannot read {what}: {exc}") from None
    if len(raw) > MAX_TOML_BYTES:
        raise error(f"{source}: {what} is larger than {MAX_TOML_BYTES // 1024} KiB; is it the right file?")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(
            f"{source}: {what} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # A subclass of ValueError, so caught first. Its messages quote a position, not the text.
        raise error(f"{source}: invalid TOML in {what}: {' '.join(str(exc).split())}") from None
    except ValueError:
        # int() refuses a decimal string of more than 4,300 digits (CPython's conversion limit).
        raise error(f"{source}: invalid TOML in {what}: a number too long to read (over 4,300 digits)") from None
    except RecursionError:
        raise error(f"{source}: invalid TOML in {what}: arrays or tables nested too deeply") from None
