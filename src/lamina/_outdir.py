"""Output folders that are never emptied, and cache folders written by rename only: :func:`atomic_dir`.

Output folders (``lamina capture --out``, report folders) carry a manifest, ``.lamina-manifest.json``,
listing the files lamina wrote there (:func:`write_manifest`). A folder without one is not lamina's and is
refused (:func:`check_output_dir`); files in a lamina folder that lamina did not write are kept.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import filecmp
import json
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterator

from ._temps import TEMP_RE, atomic_write_text, remove_tree, stale_temps, temp_name
from .errors import LaminaError

__all__ = ["MANIFEST", "Legacy", "atomic_dir", "check_output_dir", "clean_stale_temps", "read_manifest",
           "write_manifest"]

MANIFEST = ".lamina-manifest.json"
_MANIFEST_KIND = "lamina output folder"

#: A function telling which files of a folder *without* a manifest an older lamina wrote (relative POSIX
#: paths), or None when the folder is not recognised as lamina's.
Legacy = Callable[[Path], "set[str] | None"]


def clean_stale_temps(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove (or, for a parked old output folder, restore) the stale temporaries of :func:`stale_temps`.

    A stale temporary holding a manifest was part of an output-folder swap: its lamina files are deleted,
    files it shares with the target folder are deleted, anything else is moved into the target folder (never
    deleted). Everything else (cache entries, temporary files) is removed. Errors are ignored: cleaning is
    best effort. Returns the paths handled.
    """
    done = []
    temps = stale_temps(folder, name)
    # Parked old folders first: one of them may have to go back into place before the rest is compared.
    for path in sorted(temps, key=lambda p: not p.name.startswith(".old-")):
        with contextlib.suppress(OSError):
            _clean_one(path)
            done.append(path)
    return done


def _clean_one(path: Path) -> None:
    match = TEMP_RE.match(path.name)
    if not path.is_dir() or path.is_symlink():
        path.unlink()
        return
    files = read_manifest(path)
    if match is None or files is None:
        remove_tree(path)  # a cache entry or an unfinished folder: everything in it is lamina's
        return
    final = path.parent / match.group(2)
    if match.group(1) == "old" and not os.path.lexists(final):
        os.rename(path, final)  # died between the two renames of the fallback swap: the old folder returns
    elif final.is_dir() and not final.is_symlink():
        _retire(path, final, files)
    elif all(rel in files or os.lstat(path / rel).st_nlink > 1 for rel in _walk(path)[0]):
        remove_tree(path)  # only lamina files and hard links of the user's files (the folder is gone)
    else:
        os.rename(path, final)  # it holds the only copy of something: put it back where it belongs


# ---------------------------------------------------------------------------------------------- renames

_AT_FDCWD = -100
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_renameat2_fn = None


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux renameat2(2); False when the system or file system does not offer it (caller falls back)."""
    global _renameat2_fn
    if not sys.platform.startswith("linux"):
        return False
    if _renameat2_fn is None:
        try:
            _renameat2_fn = ctypes.CDLL(None, use_errno=True).renameat2
        except (OSError, AttributeError):  # glibc < 2.28 or another libc
            _renameat2_fn = False
    if _renameat2_fn is False:
        return False
    if _renameat2_fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


def _rename_noreplace(src: Path, dst: Path) -> bool:
    """Rename ``src`` to ``dst`` unless ``dst`` exists (then False, nothing changed)."""
    try:
        if _renameat2(src, dst, _RENAME_NOREPLACE):
            return True
    except FileExistsError:
        return False
    if os.path.lexists(dst):
        return False
    if src.is_dir() and not src.is_symlink():
        try:
            os.rename(src, dst)  # onto a non-empty folder this fails; an empty one is replaced (harmless)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                return False
            raise
        return True
    try:
        os.link(src, dst, follow_symlinks=False)  # link + unlink: never replaces an existing file
    except FileExistsError:
        return False
    os.unlink(src)
    return True


def _exchange(new: Path, final: Path) -> Path:
    """Put ``new`` in place of the folder ``final`` in one step; returns where the old folder now is."""
    if _renameat2(new, final, _RENAME_EXCHANGE):
        return new
    parked = final.parent / temp_name(final.name, "old")  # fallback: two renames, undone on failure
    os.rename(final, parked)
    try:
        os.rename(new, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.rename(parked, final)
        raise
    return parked


# -------------------------------------------------------------------------------------------- manifests

def _walk(root: Path) -> tuple[list[str], list[str]]:
    """(files, folders) under ``root`` as relative POSIX paths; symlinks count as files, never followed."""
    files, dirs = [], []
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(root / rel if rel else root) as it:
            for entry in it:
                sub = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_dir(follow_symlinks=False):
                    dirs.append(sub)
                    stack.append(sub)
                else:
                    files.append(sub)
    return sorted(files), sorted(dirs)


def _safe_rel(rel: object) -> bool:
    return (isinstance(rel, str) and rel != "" and not rel.startswith("/") and "\\" not in rel
            and all(part not in ("", ".", "..") for part in rel.split("/")))


def write_manifest(folder: str | os.PathLike, files: list[str] | set[str] | None = None) -> set[str]:
    """Record which files of ``folder`` lamina wrote (default: every file now in it) in its manifest.

    The manifest, ``.lamina-manifest.json``, is ``{"kind": "lamina output folder", "version": 1, "files":
    [relative POSIX paths]}``. Returns the recorded set.
    """
    folder = Path(folder)
    listed = set(_walk(folder)[0]) if files is None else set(files)
    listed.discard(MANIFEST)
    doc = {"files": sorted(listed), "kind": _MANIFEST_KIND, "version": 1}
    atomic_write_text(folder / MANIFEST, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    return listed


def read_manifest(folder: str | os.PathLike) -> set[str] | None:
    """The files lamina wrote in ``folder`` per its manifest; None if there is none or it is not valid."""
    try:
        doc = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("kind") != _MANIFEST_KIND or not isinstance(doc.get("files"), list):
        return None
    files = doc["files"]
    return set(files) if all(map(_safe_rel, files)) else None


# ----------------------------------------------------------------------------------------- output folders

def _output_path(final: str | os.PathLike) -> Path:
    path = Path(os.path.abspath(os.fspath(final)))
    return path.resolve() if path.is_symlink() else path  # write where a symlink points, keep the link


def _inspect(final: Path, legacy: Legacy | None, shown: str) -> tuple[str, set[str], bool]:
    """("absent" | "empty" | "lamina", lamina's files, whether they come from ``legacy``); raises for a file
    or a folder lamina did not create."""
    if not os.path.lexists(final):
        return "absent", set(), False
    if not final.is_dir():
        raise LaminaError(f"{shown} is a file, not a folder; choose a new folder name for the output")
    entries = sorted(os.listdir(final))
    if not entries:
        return "empty", set(), False
    files = read_manifest(final)
    if files is not None:
        return "lamina", files, False
    files = legacy(final) if legacy is not None else None
    if files is not None:
        return "lamina", set(files), True
    more = f" and {len(entries) - 3} more" if len(entries) > 3 else ""
    raise LaminaError(f"{shown} is a folder lamina did not create (it holds {', '.join(entries[:3])}{more}); "
                      "choose an empty or new folder")


def check_output_dir(final: str | os.PathLike, *, legacy: Legacy | None = None, label: str | None = None) -> None:
    """Raise :class:`LaminaError` unless ``final`` can be (re)written by ``atomic_dir(final, exists="replace")``.

    Call it before any expensive work. Refused: a file; a non-empty folder without lamina's manifest (and not
    recognised by ``legacy``); the current folder or one containing it; a place that cannot be written.
    ``label`` names the path in the message (default: the path as given, e.g. ``"--out thesis/"``).
    """
    shown = label or os.fspath(final)
    path = _output_path(final)
    if path.parent == path:
        raise LaminaError(f"{shown} is the root folder; choose a new folder for the output")
    _inspect(path, legacy, shown)
    cwd = Path(os.path.abspath(os.getcwd()))
    if cwd == path or path in cwd.parents:
        raise LaminaError(f"{shown} is or contains the current folder, which lamina would replace as a whole; "
                          "name a new folder (e.g. --out acts)")
    ancestor = path.parent
    while not os.path.lexists(ancestor):
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise LaminaError(f"{shown} cannot be created: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise LaminaError(f"{shown} cannot be written: {ancestor} is not writable; choose another place")


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, *, exists: str, legacy: Legacy | None = None,
               label: str | None = None) -> Iterator[Path]:
    """Yield a fresh temporary sibling of ``final`` to write into; when the block succeeds, publish it.

    Args:
        final: the folder to produce.
        exists: what to do about an existing ``final``:

            * ``"keep"`` (cache entries, converted models): rename only. If ``final`` exists when we finish
              (another process won), ours is discarded and theirs kept; theirs is never deleted.
            * ``"replace"`` (user-facing output folders): ``final`` may be absent, an empty folder or a folder
              lamina wrote (it has a manifest; see :func:`write_manifest`). A manifest listing every file the
              block wrote is added. Files of the old folder that lamina did not write are carried over
              (hard links, or copies where links fail); a user's file whose name the block also wrote stops
              the swap with a :class:`LaminaError` (nothing changed). The new folder then replaces the old in
              one atomic exchange (Linux ``renameat2(RENAME_EXCHANGE)``; elsewhere two renames, undone on
              failure and restored by the next run if the process died between them), and the old lamina
              files are removed. Anything else refuses with :func:`check_output_dir`'s one-line error
              before the block runs.

        legacy: recognises folders written before manifests existed (see :data:`Legacy`).
        label: how errors name the folder (default: the path as given).

    An exception or a kill at any point leaves ``final`` as it was before or complete after, plus at most a
    ``.tmp-*`` sibling that the next write of the same target removes (:func:`clean_stale_temps`). The
    temporary folder has the usual mode (0777 minus the umask).
    """
    if exists not in ("keep", "replace"):
        raise ValueError(f"exists={exists!r}; use 'keep' or 'replace'")
    shown = label or os.fspath(final)
    final = _output_path(final) if exists == "replace" else Path(os.path.abspath(os.fspath(final)))
    if exists == "replace":
        check_output_dir(final, legacy=legacy, label=shown)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(final.parent, final.name)
    tmp = final.parent / temp_name(final.name)
    tmp.mkdir()
    swapped: list[bool] = []  # set once tmp holds the *old* folder (after an exchange): never remove it then
    try:
        yield tmp
        if exists == "keep":
            _rename_noreplace(tmp, final)  # False: another process won; theirs stays, ours goes below
        else:
            _publish_replace(tmp, final, legacy, shown, swapped)
    finally:
        if not swapped and os.path.lexists(tmp):
            remove_tree(tmp)


def _publish_replace(tmp: Path, final: Path, legacy: Legacy | None, shown: str, swapped: list[bool]) -> None:
    """Swap the complete ``tmp`` in as ``final`` and retire the old folder (``swapped`` records the swap)."""
    written = write_manifest(tmp)
    for _ in range(8):  # the target may change under us (another run, a user); look again
        state, lamina_files, from_legacy = _inspect(final, legacy, shown)
        if state == "absent":
            if _rename_noreplace(tmp, final):
                return
            continue
        if state == "empty":
            try:
                os.rename(tmp, final)  # replaces an empty folder in one step; fails if it filled meanwhile
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    continue
                raise
            return
        old_files, old_dirs = _walk(final)
        user = [rel for rel in old_files if rel not in lamina_files and rel != MANIFEST]
        clash = sorted(set(user) & written)
        if clash:
            raise LaminaError(f"{shown} holds {clash[0]}, which lamina did not write but this run writes; "
                              "move it away and run again")
        if from_legacy:  # mark the old folder as lamina's, in case we die after the swap (see _clean_one)
            write_manifest(final, lamina_files)
        _carry(final, tmp, user, [d for d in old_dirs if not any(f.startswith(d + "/") for f in lamina_files)])
        old = _exchange(tmp, final)
        swapped.append(True)
        _retire(old, final, lamina_files)
        return
    raise LaminaError(f"{shown} kept changing while lamina wrote it; run again when nothing else writes there")


def _carry(src: Path, dst: Path, files: list[str], dirs: list[str]) -> None:
    """Hard-link (else copy) the user's files and folders of ``src`` into ``dst``."""
    for rel in dirs:
        (dst / rel).mkdir(parents=True, exist_ok=True)
    for rel in files:
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src / rel, target, follow_symlinks=False)
        except OSError:
            shutil.copy2(src / rel, target, follow_symlinks=False)


def _same(a: Path, b: Path) -> bool:
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except OSError:
        return False
    if (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino):
        return True
    if os.path.islink(a) and os.path.islink(b):
        return os.readlink(a) == os.readlink(b)
    return (os.path.isfile(a) and os.path.isfile(b) and sa.st_size == sb.st_size
            and filecmp.cmp(a, b, shallow=False))


def _retire(old: Path, final: Path, lamina_files: set[str]) -> None:
    """Empty a replaced folder: delete its lamina files and what ``final`` already holds; move anything
    else (a file that arrived during the swap) into ``final``; remove it once empty."""
    files, dirs = _walk(old)
    for rel in files:
        path = old / rel
        if rel in lamina_files or rel == MANIFEST or _same(path, final / rel):
            path.unlink()
        else:
            (final / rel).parent.mkdir(parents=True, exist_ok=True)
            _rename_noreplace(path, final / rel)
    for rel in sorted(dirs, key=lambda d: d.count("/"), reverse=True):
        with contextlib.suppress(OSError):
            (old / rel).rmdir()
    try:
        old.rmdir()
    except OSError:  # a leftover whose name the new folder also has: keep it, visibly, beside the folder
        os.rename(old, final.parent / f"{final.name}.lamina-leftover-{os.getpid()}-{secrets.token_hex(4)}")

