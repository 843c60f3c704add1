"""File handling of the folder source: names to ignore, paths kept inside the folder, safe moves and reads."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

#: Names a writer is still busy with (partial uploads, editor and download temporaries).
TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".filepart", ".swp", "~")
SYMLINK_REASON = "symlink not followed"
MAX_FILE_BYTES = 256 * 1024 * 1024
NAME_MAX = 255


def is_ignored_name(name: str) -> bool:
    """True for hidden, temporary and partial-upload names."""
    return not name or name.startswith(".") or name.endswith(TEMP_SUFFIXES)


def relative_inside(root: Path, path: Path, recursive: bool) -> str | None:
    """Posix path of ``path`` relative to the resolved ``root``; None when outside, ignored, or via ``..``.

    Only the parent directory is resolved: a symlinked file stays a symlink, a symlinked directory is outside.
    """
    if path.name in ("", ".", "..") or is_ignored_name(path.name):
        return None
    try:
        parent = path.parent.resolve()
    except (OSError, RuntimeError):
        return None
    if parent != root and not (recursive and parent.is_relative_to(root)):
        return None
    rel = (parent / path.name).relative_to(root)
    if any(part == ".." or is_ignored_name(part) for part in rel.parts):
        return None
    return rel.as_posix()


def fit_name(stem: str, suffix: str) -> str:
    """``stem + suffix``, the stem shortened (on a character boundary) to fit the 255-byte name limit."""
    room = NAME_MAX - len(os.fsencode(suffix))
    raw = os.fsencode(stem)
    if len(raw) > room:
        stem = os.fsdecode(raw[:room].decode("utf-8", "ignore").encode("utf-8"))
    return stem + suffix


def move_unique(src: Path, dest: Path) -> Path:
    """Move ``src`` (a symlink itself, not its target) to ``dest``, or ``<stem>-1<ext>``... if taken."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    stem, ext = os.path.splitext(dest.name)
    candidate, n = dest, 0
    while os.path.lexists(candidate):
        n += 1
        candidate = dest.with_name(fit_name(stem, f"-{n}{ext}"))
    shutil.move(src, candidate)
    return candidate


def read_regular(path: Path) -> bytes:
    """Read a regular file without following a symlink or blocking on a FIFO swapped in meanwhile."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, flags)
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            msg = f"{path}: not a regular file"
            raise OSError(msg)
        if st.st_size > MAX_FILE_BYTES:
            msg = f"{path}: {st.st_size} bytes exceeds the {MAX_FILE_BYTES} byte limit"
            raise OSError(msg)
        return fh.read()
