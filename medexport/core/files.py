"""Files: their content hashes, and writes that a reader never sees half of.

Hashes (:func:`file_sha256`) are remembered per version of a file (path, inode, size, mtime, ctime), so a build or
a run hashes each file once. Writes go to a temporary sibling that is renamed over the target: an interrupted
write leaves the previous file (or none) and at most a ``*.partial`` file, which the next write replaces. The
temporary file is created exclusively (a link planted under its name is removed, never followed).

Locks (:func:`take_lock`, :func:`release_lock`): one exclusive ``flock`` per lock file, for every lock medexport
takes (a bundle's build, a command's output folder, a generate run and its record). The holder writes its process
id into the file, so that a process that finds the lock taken can say who holds it; a lock is waited for a bounded
time, never forever, and a lock path that is not a regular file is refused before it is opened.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import socket
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


_HASHES: dict[tuple, str] = {}


def file_key(path: str | os.PathLike) -> tuple:
    """(path, inode, size, mtime, ctime): the version of a file. The change time is in the key because a writer
    can restore the mtime but not the ctime."""
    st = os.stat(path)
    return str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, remembered per version of the file (:func:`file_key`)."""
    key = file_key(path)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def create_exclusive(path: str | os.PathLike) -> Path:
    """Create ``path`` as a new, empty regular file of ours: whatever was under that name before (an earlier
    interrupted write, or a link planted there) is removed first, and the file is created with O_EXCL and
    without following links, so a write never lands in someone else's file."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    os.close(os.open(path, flags, 0o644))
    return path


@contextmanager
def replacing(path: str | os.PathLike, *, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed over ``path`` (with ``mode`` if given),
    on failure removed."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    create_exclusive(tmp)
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str, *, durable: bool = False) -> Path:
    """Write ``text`` atomically; ``durable`` also flushes it to disk before the rename (a manifest that must
    survive a power cut names only files that exist)."""
    with replacing(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            if durable:
                f.flush()
                os.fsync(f.fileno())
    return Path(path)


def write_json(path: str | os.PathLike, data: object, *, durable: bool = False) -> Path:
    return write_text(path, json.dumps(data, indent=2) + "\n", durable=durable)


def check_output_folder(
    out: Path, *, marker: str, force: bool, kind: str, error: type, written: Callable[[Path], set[str]]
) -> None:
    """Refuse an output folder that is not ours to write: a file; a non-empty folder without ``marker`` (someone
    else's); an earlier output of ours without ``force``; or one to which files were added that the earlier
    output did not write (``written(out)``: the names it wrote), which ``force`` would delete. ``error``: the
    exception type to raise; ``kind``: what the output is, for the messages ("a calibration set")."""
    if out.is_symlink():
        raise error(f"{out} is a symbolic link: choose a real folder for --output (nothing was written)")
    if out.exists() and not out.is_dir():
        raise error(f"{out} is a file, not a folder: choose another --output")
    if not (out.is_dir() and any(out.iterdir())):
        return
    if not (out / marker).is_file():
        raise error(
            f"{out} is not empty and not {kind}: choose an empty or new --output (nothing was written or deleted)"
        )
    if not force:
        raise error(f"{out} holds {kind} already: add --force to replace it")
    foreign = sorted(set(os.listdir(out)) - written(out) - {marker})
    if foreign:
        raise error(
            f"{out} holds files medexport did not write there ({', '.join(foreign[:5])}"
            f"{', ...' if len(foreign) > 5 else ''}); --force replaces only what medexport wrote: move them "
            f"out, or choose another --output (nothing was written or deleted)"
        )


def partial_folder(out: Path, error: type) -> Path:
    """A new, empty ``<out>.partial`` folder to build an output in: one left by an interrupted run is removed
    first; a link planted under that name is refused, never followed."""
    import shutil

    tmp = Path(str(out) + ".partial")
    if tmp.is_symlink():
        raise error(f"{tmp} is a symbolic link (not made by medexport): remove it, or choose another --output")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
    except FileExistsError:
        raise error(
            f"{tmp} appeared while it was being prepared (another run writing the same output?): try again"
        ) from None
    return tmp


def replace_folder(complete: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Put the finished folder ``complete`` at ``target``; a folder already there is replaced as a whole (moved
    aside, then removed), never mixed with the new one."""
    import shutil

    complete, target = Path(complete), Path(target)
    old = None
    if target.exists():
        old = target.with_name(target.name + ".old.partial")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(complete, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------------------------------------
# Locks
# ---------------------------------------------------------------------------------------------------------
_POLL_S = 0.05  # how often a taken lock is tried again while it is waited for


def take_lock(
    path: str | os.PathLike,
    *,
    error: type,
    busy: Callable[[str], str],
    wait: float = 0.0,
    fix: str = "remove it, or choose another --output",
) -> int:
    """An exclusive ``flock`` on the lock file ``path``: the open descriptor, which holds the lock until
    :func:`release_lock` (or the process's end) lets it go.

    The file is created if need be. A link, a folder or anything else that is not a regular file under its name is
    refused before it is opened (``error``, saying to ``fix`` it): never followed, never opened. Once held, the
    file records the holder (process id and host) for :func:`lock_holder`. While another process holds the lock it
    is tried again for ``wait`` seconds; then ``error(busy(holder))``, ``holder`` being what :func:`lock_holder`
    says of it ("process 1234 (medexport generate ...)"): a message, never an endless wait.
    """
    import fcntl  # POSIX: imported here so that the rest of this module loads anywhere

    path = Path(path)
    _refuse_odd_lock(path, error, fix)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as e:  # something took the name between the check and the open
        if e.errno in (errno.ELOOP, errno.EISDIR):
            _refuse_odd_lock(path, error, fix)
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise error(f"{path} is not a regular file (not made by medexport), where medexport keeps a lock: {fix}")
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise error(busy(lock_holder(path))) from None
                time.sleep(min(_POLL_S, max(0.0, deadline - time.monotonic())))
        _record_holder(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def release_lock(fd: int | None) -> None:
    """Let go of a lock taken with :func:`take_lock` (None: none was taken)."""
    if fd is not None:
        os.close(fd)


@contextmanager
def holding_lock(path: str | os.PathLike, **kwargs) -> Iterator[int]:
    """:func:`take_lock` for the duration of a ``with`` block (the same arguments)."""
    fd = take_lock(path, **kwargs)
    try:
        yield fd
    finally:
        release_lock(fd)


@contextmanager
def locked_folder(folder: str | os.PathLike, lock: str, **kwargs) -> Iterator[Path]:
    """Make ``folder`` (and its parents) and hold its lock file ``lock`` (:func:`take_lock`'s arguments) for a
    ``with`` block that writes into it. A block that fails leaves no folder behind where this made the folder
    and nothing but the lock was written into it."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    with holding_lock(folder / lock, **kwargs):
        try:
            yield folder
        except BaseException:
            if created:
                try:
                    if {p.name for p in folder.iterdir()} <= {lock}:
                        (folder / lock).unlink(missing_ok=True)
                        folder.rmdir()
                except OSError:
                    pass  # someone else's files arrived meanwhile: theirs to keep
            raise


def lock_holder(path: str | os.PathLike) -> str:
    """Who holds the lock ``path``, as its holder recorded it: "process 1234 (medexport generate ...)", with the
    host where it is another; "a process that did not record itself" where the file names no live process (a
    medexport older than the record, or another program)."""
    try:
        with open(path, "rb") as f:
            fields = f.read(256).decode("utf-8", "replace").split()
        pid, host = int(fields[0]), fields[1] if len(fields) > 1 else ""
    except (OSError, ValueError, IndexError):
        return "a process that did not record itself"
    if host and host != socket.gethostname():
        return f"process {pid} on host {host}"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:  # the recorded holder is gone: whoever holds the lock now did not record itself
        return "a process that did not record itself"
    except PermissionError:  # alive, another user's
        pass
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            command = " ".join(f.read(400).replace(b"\0", b" ").decode("utf-8", "replace").split())
    except OSError:
        command = ""
    if len(command) > 80:
        command = command[:77] + "..."
    return f"process {pid}" + (f" ({command})" if command else "")


def _refuse_odd_lock(path: Path, error: type, fix: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        raise error(f"{path} is a symbolic link (not made by medexport), where medexport keeps a lock: {fix}")
    if stat.S_ISDIR(mode):
        raise error(f"{path} is a folder, not a lock file (not made by medexport): {fix}")
    if not stat.S_ISREG(mode):
        raise error(f"{path} is not a regular file (not made by medexport), where medexport keeps a lock: {fix}")


def _record_holder(fd: int) -> None:
    """Write this process's id and host into the lock file it now holds."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    except OSError as e:  # the record only names the holder in others' messages; the lock itself is held
        log.debug("could not record the holder of a lock: %s", e)
