"""Owner-only data folders and files, created so from the first byte (no chmod afterwards).

Card data and keys live in these files: a file created 0644 and tightened later is readable
by anyone who opens it in between, so the mode is given to the system call that creates it.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) as 0700; an existing folder is left as it is
    (it may be a folder the user chose, such as the current one)."""
    if not path.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # another process made it first
            path.mkdir(mode=DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """Create `path` empty with mode 0600 unless it exists (its folder as `private_dir`)."""
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return path
    os.close(fd)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write a new file with mode 0600; refuses to overwrite an existing one."""
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def others_can_read(path: Path) -> bool:
    """True when the group or others have any access to `path`."""
    return bool(path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))
