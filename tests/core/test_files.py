"""``core/files``: the one lock helper every lock of medexport goes through."""

import os
import socket
import time

import pytest

from medexport.core.files import holding_lock, lock_holder, release_lock, take_lock
from medexport.errors import MedexportError


def busy(holder):
    return f"taken by {holder}"


def test_a_lock_records_its_holder_and_a_taken_one_is_named_after_a_bounded_wait(tmp_path):
    path = tmp_path / "x.lock"
    fd = take_lock(path, error=MedexportError, busy=busy)
    try:
        assert path.read_text() == f"{os.getpid()} {socket.gethostname()}\n"
        assert lock_holder(path).startswith(f"process {os.getpid()} (")  # with its command line
        start = time.monotonic()
        with pytest.raises(MedexportError, match=rf"^taken by process {os.getpid()} \("):
            take_lock(path, error=MedexportError, busy=busy, wait=0.3)  # another descriptor: another holder
        assert 0.3 <= time.monotonic() - start < 3
    finally:
        release_lock(fd)
    with holding_lock(path, error=MedexportError, busy=busy):  # free again
        pass


def test_a_holder_that_did_not_record_itself(tmp_path):
    path = tmp_path / "x.lock"
    for text in ("", "not a pid", "999999999 " + socket.gethostname()):  # nothing, nonsense, a process now gone
        path.write_text(text)
        assert lock_holder(path) == "a process that did not record itself"
    path.write_text("1234 another-host\n")
    assert lock_holder(path) == "process 1234 on host another-host"


def test_a_lock_path_that_is_not_a_regular_file_is_refused_before_it_is_opened(tmp_path):
    folder = tmp_path / "folder.lock"
    folder.mkdir()
    with pytest.raises(
        MedexportError,
        match=r"folder.lock is a folder, not a lock file \(not made by medexport\): "
        r"remove it, or choose another --output",
    ):
        take_lock(folder, error=MedexportError, busy=busy)
    link = tmp_path / "link.lock"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(MedexportError, match="link.lock is a symbolic link"):
        take_lock(link, error=MedexportError, busy=busy, fix="remove it")
    assert not (tmp_path / "elsewhere").exists()  # never followed
    fifo = tmp_path / "fifo.lock"
    os.mkfifo(fifo)
    with pytest.raises(MedexportError, match="fifo.lock is not a regular file"):
        take_lock(fifo, error=MedexportError, busy=busy)
