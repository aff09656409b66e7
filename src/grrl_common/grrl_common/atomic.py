"""Publishing a directory atomically (checkpoints): readers see the old one or the new one."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def write_directory_atomically(
    path: str | Path, write: Callable[[Path], None], replaces: tuple[str, ...]
) -> Path:
    """Have ``write`` fill a temporary sibling directory, then rename it into ``path``.

    Files are fsynced before the rename publishes them. Entries of an existing ``path`` not
    named in ``replaces`` (a trainer's resume state beside a checkpoint) move into the new one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    for f in tmp.iterdir():  # durable before the rename publishes it
        if f.is_file():
            with open(f, "rb") as handle:
                os.fsync(handle.fileno())
    old = path.with_name(f".{path.name}.old")
    if path.exists():
        for entry in path.iterdir():
            if entry.name not in replaces:
                os.replace(entry, tmp / entry.name)
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path
