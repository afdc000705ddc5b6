"""The history file on disk: judging an existing file without writing to it, and setting a
damaged set (the database and its -wal/-shm/-journal siblings) aside, never deleting and never
overwriting anything (see :mod:`hw.history`)."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from hw.history.records import HistoryError
from hw.history.schema import diagnose

_SQLITE_MAGIC = b"SQLite format 3\x00"
_SIBLING_SUFFIXES = ("-wal", "-shm", "-journal")
# Primary SQLite result codes (extended codes carry them in the low byte).
_SQLITE_READONLY = 8
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26
BUSY_TIMEOUT_S = 5.0

#: Returned by :func:`inspect_read_only` when SQLite must recover the file (write) first.
NEEDS_WRITE = object()


def _sqlite_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def fsync_dir(directory: Path) -> None:
    # Make renames and new files survive a power cut; not every filesystem can fsync a dir.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _move_no_clobber(src: Path, dst: Path) -> None:
    # os.rename would silently replace dst; a hard link fails instead if dst exists.
    try:
        os.link(src, dst)
    except FileExistsError:
        raise
    except OSError:
        # No hard links here (e.g. FAT): the caller already chose a free name.
        if os.path.lexists(dst):
            raise FileExistsError(dst) from None
        os.rename(src, dst)
        return
    os.unlink(src)


# --------------------------------------------------------------------------------------------
# History
# --------------------------------------------------------------------------------------------


def sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def inspect_read_only(path: Path) -> str | object | None:
    """Judge an existing file without writing to it (so a set-aside file keeps its bytes).

    Returns None (usable or absent), a damage reason, or :data:`NEEDS_WRITE`.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if not path.parent.is_dir():
            raise HistoryError(
                f"directory for treatment history does not exist: {path.parent}"
            ) from None
        return orphan_journal(path, "journal file without its database")
    except OSError as exc:
        raise HistoryError(f"cannot access treatment history {path}: {exc}") from exc
    if not os.path.isfile(path):
        raise HistoryError(f"treatment history path is not a regular file: {path}")
    try:
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        raise HistoryError(f"cannot read treatment history {path}: {exc}") from exc
    if st.st_size == 0:
        return orphan_journal(path, "journal file next to an empty database")
    if head != _SQLITE_MAGIC:
        return "not a SQLite database"
    uri = path.absolute().as_uri() + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error as exc:
        raise HistoryError(f"cannot open treatment history {path}: {exc}") from exc
    try:
        return diagnose_or_raise(path, conn, read_only=True)
    finally:
        conn.close()


def orphan_journal(path: Path, reason: str) -> str | None:
    for suffix in ("-wal", "-journal"):
        try:
            if sibling(path, suffix).stat().st_size > 0:
                return reason
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise HistoryError(f"cannot access {sibling(path, suffix)}: {exc}") from exc
    return None


def diagnose_or_raise(
    path: Path, conn: sqlite3.Connection, *, read_only: bool = False
) -> str | object | None:
    try:
        return diagnose(conn)
    except sqlite3.DatabaseError as exc:
        code = _sqlite_code(exc)
        if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
            return f"unreadable: {exc}"
        if read_only and code == _SQLITE_READONLY:
            return NEEDS_WRITE
        raise HistoryError(
            f"cannot use treatment history {path}: {exc} (SQLite needs to read and write"
            " the file and create its -wal/-shm files in the same directory)"
        ) from exc


def move_aside(path: Path, now_s: float) -> list[Path]:
    """Rename the file set to ``<name>.damaged-<local time of now_s>`` (``-2``, ``-3``... on a
    clash); returns the new paths."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now_s))
    base = f"{path.name}.damaged-{stamp}"
    members = ("", *_SIBLING_SUFFIXES)
    n = 1
    while True:
        name = base if n == 1 else f"{base}-{n}"
        if not any(os.path.lexists(path.with_name(name + s)) for s in members):
            break
        n += 1
    moved: list[Path] = []
    try:
        # Main file first: a crash before the siblings move leaves an orphan journal, which
        # the next open sets aside too (SQLite would delete it next to a new database).
        for suffix in members:
            src = sibling(path, suffix)
            if os.path.lexists(src):
                dst = path.with_name(name + suffix)
                _move_no_clobber(src, dst)
                moved.append(dst)
    except OSError as exc:
        raise HistoryError(
            f"treatment history {path} is damaged but could not be set aside: {exc}"
        ) from exc
    finally:
        fsync_dir(path.parent)
    return moved
