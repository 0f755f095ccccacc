"""Temporaries: every file or folder lamina writes is first a sibling named ``.tmp-<name>-<pid>-<8 hex>``
(unique per process and call), renamed into place only when complete.

A process killed meanwhile leaves its temporary behind. :func:`stale_temps` finds the temporaries of dead
processes (never those of a live one: the pid in the name is checked; a zombie counts as dead). The check
assumes one machine: do not share an output or cache folder between hosts or pid namespaces while lamina
writes to it from several of them.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import time
from pathlib import Path

__all__ = ["atomic_write_text", "default_file_mode", "pid_alive", "remove_tree", "stale_temps", "temp_name"]

# .tmp-<name>-<pid>-<8 hex>: a temporary being written; .old-...: a replaced folder parked by the two-rename
# fallback of an output-folder swap (see lamina._outdir).
TEMP_RE = re.compile(r"^\.(tmp|old)-(.+)-(\d+)-([0-9a-f]{8})$")
# Temporaries of lamina < 0.2 (``.tmp-<name>-<random>``, no pid) count as stale after an hour: no write of
# that version took longer than a few minutes.
_LEGACY_TEMP_AGE_S = 3600.0


def temp_name(name: str, kind: str = "tmp") -> str:
    """``.<kind>-<name>-<pid>-<8 random hex>``: unique per process and call."""
    return f".{kind}-{name}-{os.getpid()}-{secrets.token_hex(4)}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (a zombie counts as dead; unsure means alive)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # EPERM: it exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
        return stat[stat.rindex(b")") + 2:][:1] not in (b"Z", b"X")
    except (OSError, ValueError):
        return True


def stale_temps(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Temporaries in ``folder`` (of the target ``name``, or of any target) whose writing process is dead."""
    folder = Path(folder)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    out = []
    for entry in sorted(names):
        match = TEMP_RE.match(entry)
        if match is not None:
            if (name is None or match.group(2) == name) and not pid_alive(int(match.group(3))):
                out.append(folder / entry)
        elif entry.startswith(".tmp-") and (name is None or entry.startswith(f".tmp-{name}-")):
            with contextlib.suppress(OSError):  # a legacy temporary without a pid: stale when old
                if time.time() - os.lstat(folder / entry).st_mtime > _LEGACY_TEMP_AGE_S:
                    out.append(folder / entry)
    return out


def remove_tree(path: Path) -> None:
    """Remove a folder tree or a file (symlinks are removed, never followed); missing is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def default_file_mode() -> int:
    """The mode a newly created file gets here (0o666 minus the umask), e.g. 0o644."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: read it by setting it (and put it back at once)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary sibling and a rename; usual file mode."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in stale_temps(path.parent, path.name):  # left by a killed writer of the same file
        if not stale.is_dir():
            remove_tree(stale)
    tmp = path.parent / temp_name(path.name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, unlike mkstemp's 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)

