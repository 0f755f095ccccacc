"""Checks of what a user passed (text files, output folders), run before anything expensive.

Each check raises :class:`~lamina.errors.LaminaError` with one line naming the problem and the fix, so a mistake
costs a second instead of a model load and a computation.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import LaminaError

__all__ = ["read_text_file", "check_output_folder", "check_writable"]

_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def read_text_file(path: str | os.PathLike, option: str = "--text-file") -> str:
    """The text of a UTF-8 file (a leading byte-order mark is dropped).

    Args:
        path: the file.
        option: how the user named it (used in messages), e.g. ``"--corpus"``.

    Raises:
        LaminaError: missing, a folder, unreadable, binary, not UTF-8, or empty (only white space).
    """
    shown = f"{option} {os.fspath(path)}"
    p = Path(path)
    if p.is_dir():
        raise LaminaError(f"{shown} is a folder; pass a text file")
    chunks = []
    try:
        with open(p, "rb") as handle:
            # In blocks, so that binary input (/dev/zero, /dev/urandom, an image) stops at its first NUL byte
            # instead of being read whole.
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                if not chunks and chunk.startswith(_UTF16_BOMS):
                    raise LaminaError(f"{shown} is UTF-16 text; convert it to UTF-8, e.g. iconv -f UTF-16 -t UTF-8 "
                                      f"{os.fspath(path)} > {p.stem}.utf8{p.suffix}")
                if b"\x00" in chunk:
                    raise LaminaError(f"{shown} is a binary file (it contains NUL bytes), not text; pass a UTF-8 "
                                      "text file")
                chunks.append(chunk)
    except FileNotFoundError:
        raise LaminaError(f"{shown} does not exist; check the path") from None
    except OSError as exc:
        raise LaminaError(f"cannot read {shown}: {exc.strerror or exc}; check the path and its permissions") from None
    data = b"".join(chunks)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise LaminaError(f"{shown} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); convert it, "
                          f"e.g. iconv -f latin1 -t UTF-8 {os.fspath(path)} > {p.stem}.utf8{p.suffix}") from None
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise LaminaError(f"{shown} is empty; pass a file with some text")
    return text


def check_writable(path: str | os.PathLike, option: str = "--out") -> None:
    """Raise unless files can be created in ``path`` (a folder, or the nearest existing folder above it).

    ``os.access`` alone is not enough (root passes it on many read-only mounts), so a temporary file is created
    and removed again.
    """
    _probe(Path(os.path.abspath(os.fspath(path))), f"{option} {os.fspath(path)}")


def check_output_folder(path: str | os.PathLike, option: str = "--out", legacy=None) -> None:
    """Raise unless ``path`` may be (re)written as a lamina output folder: named, not a file, not a folder lamina
    did not create (:func:`lamina._io.check_output_dir`), and its parent writable (the folder is written as a
    temporary sibling and renamed into place)."""
    if not os.fspath(path).strip():
        raise LaminaError(f"{option} is empty; name a folder for the output")
    from ._io import check_output_dir

    shown = f"{option} {os.fspath(path)}"
    check_output_dir(path, legacy=legacy, label=shown)
    _probe(Path(os.path.abspath(os.fspath(path))).parent, shown)


def _probe(where: Path, shown: str) -> None:
    while not os.path.lexists(where) and where.parent != where:
        where = where.parent
    if not where.is_dir():
        raise LaminaError(f"{shown} cannot be created: {where} is a file, not a folder; choose another path")
    try:
        with tempfile.TemporaryFile(dir=where, prefix=".lamina-probe-"):
            pass
    except OSError as exc:
        raise LaminaError(f"{shown} cannot be written ({where}: {exc.strerror or exc}); choose a writable "
                          "folder") from None
