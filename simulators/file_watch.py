"""Being told when a file is replaced, without looking at it again and again (Linux inotify).

A replay's shared clock is one small file that its conductor rewrites atomically (write a
temporary file, rename it over the old one) when the speed changes or time jumps; every process
of the replay must notice at once, but that happens a few times a replay. ``watch_file`` starts
one thread per watched file and process that blocks on the kernel's inotify until the file is
replaced or closed after writing, and then calls the listeners: nothing runs in between.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import struct
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

_IN_CLOSE_WRITE = 0x00000008
_IN_MOVED_TO = 0x00000080
_EVENT_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)

_lock = threading.Lock()
_watchers: dict[Path, _Watcher] = {}


class _Watcher:
    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.listeners: list[Callable[[], None]] = []
        threading.Thread(target=self._run, name=f"watch {path.name}", daemon=True).start()

    def _run(self) -> None:
        name = os.fsencode(self.path.name)
        while True:
            try:
                data = os.read(self.fd, 4096)
            except OSError:
                log.exception("watching %s stopped", self.path)
                return
            if name in _names(data):
                with _lock:
                    listeners = list(self.listeners)
                for listener in listeners:
                    listener()


def _names(data: bytes) -> set[bytes]:
    """The file names in a buffer of inotify events."""
    names, offset = set(), 0
    while offset + _EVENT_HEADER.size <= len(data):
        _, _, _, size = _EVENT_HEADER.unpack_from(data, offset)
        offset += _EVENT_HEADER.size
        names.add(data[offset : offset + size].rstrip(b"\0"))
        offset += size
    return names


def _inotify_fd(folder: Path) -> int | None:
    """An inotify descriptor watching ``folder`` for files written or renamed into it."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        fd = libc.inotify_init1(os.O_CLOEXEC)
    except (OSError, AttributeError):  # not Linux
        return None
    if fd < 0:
        return None
    if libc.inotify_add_watch(fd, os.fsencode(folder), _IN_CLOSE_WRITE | _IN_MOVED_TO) < 0:
        os.close(fd)
        return None
    return fd


def watch_file(path: Path, listener: Callable[[], None]) -> bool:
    """Call ``listener`` (from a thread of its own) each time ``path`` is replaced or written;
    False when this system cannot say (no inotify): the caller must keep looking itself."""
    path = Path(path).absolute()
    with _lock:
        watcher = _watchers.get(path)
        if watcher is None:
            fd = _inotify_fd(path.parent)
            if fd is None:
                return False
            watcher = _watchers[path] = _Watcher(path, fd)
        watcher.listeners.append(listener)
    return True
