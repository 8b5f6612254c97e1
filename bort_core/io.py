"""Files: atomic replacement, plain file modes, orphan temp-file cleanup, safetensors reading.

Every bort writer that replaces a file goes through `atomic_path` (or `atomic_open`,
`write_text`, `write_bytes` on top of it):
- the data goes to a temp sibling named by `temp_name`, `.<name>.<pid>-<8 hex>.tmp`, created
  exclusively with the modes a plain write would give (an existing destination's modes are kept);
- it is fsynced and takes the destination's place with one rename (then the directory is fsynced),
  so a reader sees the old file or the new one, never a torn one;
- on any failure the temp is removed, and an OSError about the temp names the destination.
A writer killed mid-way (or one whose disk filled and which was then killed) leaves at most such
a temp; `remove_orphans(directory)` removes those whose process is no longer running. Commands call
it, through `bort_core.cli.main`, on the folders they write (their `writes` default).
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from typing import Callable, Iterator, List, Optional

from bort_core.deps import require

_ORPHAN = re.compile(r"^\..+\.(\d+)-[0-9a-f]{8}\.tmp$")


def temp_name(path: str) -> str:
    """A fresh temp path next to `path`, in the one convention `remove_orphans` recognises."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, ".%s.%d-%s.tmp" % (name, os.getpid(), os.urandom(4).hex()))


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # someone else's process
        return True
    return True


def remove_orphans(directory: str) -> List[str]:
    """Remove the temp files and folders (`temp_name`'s convention) that a writer no longer
    running left in `directory`; returns their paths. Another live process's temps are kept."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for name in sorted(names):
        match = _ORPHAN.match(name)
        if not match or _running(int(match.group(1))):
            continue
        path = os.path.join(directory, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
        removed.append(path)
    return removed


def ensure_dir(path: str) -> str:
    """`os.makedirs(path, exist_ok=True)`, with a NotADirectoryError naming `path` when a file
    is in the way."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory", path)
    os.makedirs(path, exist_ok=True)
    return path


def fsync_dir(directory: str) -> None:
    """Make a rename in `directory` durable (best effort: some filesystems refuse it)."""
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


def _fsync_file(path: str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _renamed(err: OSError, tmp: str, path: str) -> OSError:
    """`err` naming the destination (what the user asked to write) where it named the temp,
    or nothing (a failed write or fsync)."""
    if err.filename not in (None, tmp) or err.errno is None:
        return err
    out = type(err)(err.errno, err.strerror, path)
    out.__traceback__ = err.__traceback__
    return out


@contextlib.contextmanager
def atomic_path(path: str, directory: bool = False,
                install: Optional[Callable[[str, str], None]] = None) -> Iterator[str]:
    """Yield a temp path (an empty file, or with `directory` an empty folder) to write in place
    of `path`; on success it replaces `path` as described in the module docstring. `install(tmp,
    path)` replaces the default `os.replace` (a folder merging into an existing one, say). A
    symlink is written through; a destination of another kind (a folder for a file, a device)
    is refused."""
    path = os.path.realpath(path)
    if os.path.exists(path) and os.path.isdir(path) != directory:
        if directory:
            raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory", path)
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", path)
    if os.path.exists(path) and not directory and not os.path.isfile(path):
        raise OSError(errno.EINVAL, "not a regular file; refusing to replace it", path)
    tmp = temp_name(path)
    try:
        if directory:
            os.mkdir(tmp, 0o777)
        else:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        yield tmp
        if directory:
            for name in os.listdir(tmp):
                if os.path.isfile(os.path.join(tmp, name)):
                    _fsync_file(os.path.join(tmp, name))
            fsync_dir(tmp)
        else:
            _fsync_file(tmp)
        if os.path.exists(path):
            shutil.copymode(path, tmp)
        (install or os.replace)(tmp, path)
    except OSError as err:
        raise _renamed(err, tmp, path) from None
    finally:
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.lexists(tmp):
            os.remove(tmp)
    fsync_dir(os.path.dirname(path))


def check_writable(path: str, directory: bool = False) -> None:
    """Raise now the OSError `atomic_path(path, directory)` would raise before writing (a
    destination of another kind, a folder refusing new entries), so that a command fails
    before its long work; a missing parent folder is left to the writer (it may create it)."""
    if os.path.isdir(os.path.dirname(os.path.realpath(path))):
        with atomic_path(path, directory, install=lambda tmp, dst: None):
            pass


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **kwargs):
    """`open(path, mode)` whose content replaces `path` only once the block ends without error."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def write_text(path: str, text: str) -> None:
    """Replace `path` with `text` (UTF-8), atomically."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_bytes(path: str, data: bytes) -> None:
    """Replace `path` with `data`, atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def save_figure(fig, path: str, dpi=None) -> None:
    """Replace `path` with a matplotlib figure as PNG, atomically, and close the figure."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)


# ------------------------------------------------------------------------------ reading

def unreadable(path, what, err) -> ValueError:
    """The ValueError for `path` (of `what` kind) that a reader failed on with `err`."""
    cause = type(err).__name__ + (": %s" % err if str(err) else "")
    return ValueError("%s (%d bytes): not a readable %s; the file may be truncated or corrupt "
                      "(%s)" % (path, os.path.getsize(path), what, cause))


def read_safetensors(path: str):
    """(tensors, metadata) of a safetensors file; a ValueError naming it if it is unreadable."""
    require("safetensors", "torch", "reading %s" % path)
    from safetensors import SafetensorError, safe_open
    from safetensors.numpy import load_file

    try:
        tensors = load_file(path)
        with safe_open(path, framework="numpy") as f:
            return tensors, f.metadata() or {}
    except SafetensorError as err:
        raise unreadable(path, "safetensors file", err) from err
