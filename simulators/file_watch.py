"""Being told when a file is replaced, without looking at it again and again (Linux inotify).

A replay's shared clock is one small file that its conductor rewrites atomically (write a
temporary file, rename it over the old one) when the speed changes or time jumps; every process
of the replay must notice at once, but that happens a few times a replay. A process holds one
inotify instance and one thread that blocks on it, whatever it watches (the per-user limit is
128 instances, and a fleet's agents hold one each): ``watch_file`` adds a watch on the file's
folder, shared by every file watched there, and ``FileWatch.close`` takes it off when the last
of them goes. Nothing runs between changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import struct
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

_IN_CLOSE_WRITE = 0x00000008
_IN_MOVED_TO = 0x00000080
_IN_IGNORED = 0x00008000  # the watch is gone (taken off, or its folder removed)
_EVENT_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)

Listener = Callable[[], None]


class _Folder:
    """One watched folder: its watch descriptor and the listeners of each file name in it."""

    def __init__(self, path: Path, wd: int) -> None:
        self.path, self.wd = path, wd
        self.listeners: dict[bytes, list[Listener]] = {}


class _Inotify:
    """This process's inotify instance, its watched folders and the thread reading it."""

    def __init__(self, libc: ctypes.CDLL, fd: int) -> None:
        self.libc, self.fd = libc, fd
        self.folders: dict[Path, _Folder] = {}
        self.by_wd: dict[int, _Folder] = {}
        threading.Thread(target=self._run, name="file-watch", daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 4096)
            except OSError:
                log.exception("watching files stopped")
                return
            calls: list[Listener] = []
            with _lock:
                for wd, mask, name in _events(data):
                    folder = self.by_wd.get(wd)
                    if folder is None:
                        continue
                    if mask & _IN_IGNORED:  # its folder was removed: the kernel dropped it
                        self._forget(folder)
                    else:
                        calls += folder.listeners.get(name, ())
            for listener in calls:
                listener()

    def add(self, path: Path, listener: Listener) -> _Folder | None:
        folder = self.folders.get(path.parent)
        if folder is None:
            mask = _IN_CLOSE_WRITE | _IN_MOVED_TO
            wd = self.libc.inotify_add_watch(self.fd, os.fsencode(path.parent), mask)
            if wd < 0:  # no such folder, or the per-user limit of watches reached
                return None
            folder = self.folders[path.parent] = self.by_wd[wd] = _Folder(path.parent, wd)
        folder.listeners.setdefault(os.fsencode(path.name), []).append(listener)
        return folder

    def remove(self, folder: _Folder, name: bytes, listener: Listener) -> None:
        listeners = folder.listeners.get(name, [])
        if listener in listeners:
            listeners.remove(listener)
        if not listeners:
            folder.listeners.pop(name, None)
        if not folder.listeners and self.folders.get(folder.path) is folder:
            self.libc.inotify_rm_watch(self.fd, folder.wd)  # fails harmlessly if already gone
            self._forget(folder)

    def _forget(self, folder: _Folder) -> None:
        if self.folders.get(folder.path) is folder:
            del self.folders[folder.path]
        if self.by_wd.get(folder.wd) is folder:
            del self.by_wd[folder.wd]


def _events(data: bytes) -> list[tuple[int, int, bytes]]:
    """(watch descriptor, mask, file name) of each event in a buffer of inotify events."""
    events, offset = [], 0
    while offset + _EVENT_HEADER.size <= len(data):
        wd, mask, _, size = _EVENT_HEADER.unpack_from(data, offset)
        offset += _EVENT_HEADER.size
        events.append((wd, mask, data[offset : offset + size].rstrip(b"\0")))
        offset += size
    return events


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        libc.inotify_init1  # noqa: B018 (not Linux: no such function)
    except (OSError, AttributeError):
        return None
    return libc


def _open_inotify() -> _Inotify | None:
    libc = _libc()
    if libc is None:
        return None
    fd = libc.inotify_init1(os.O_CLOEXEC)
    if fd < 0:  # the per-user limit of instances reached: try again at the next watch
        return None
    return _Inotify(libc, fd)


_lock = threading.Lock()
_inotify: _Inotify | None = None


class FileWatch:
    """One listener of one file; ``close`` stops the calls (and, the last in its folder,
    takes the watch off)."""

    def __init__(self, inotify: _Inotify, folder: _Folder, name: bytes, listener: Listener):
        self._inotify, self._folder, self._name, self._listener = inotify, folder, name, listener
        self._closed = False

    def close(self) -> None:
        with _lock:
            if not self._closed:
                self._closed = True
                self._inotify.remove(self._folder, self._name, self._listener)


def watch_file(path: Path, listener: Listener) -> FileWatch | None:
    """Call ``listener`` (from this process's watching thread) each time ``path`` is replaced
    or written, until the returned watch is closed; None when this system cannot say (no
    inotify, no such folder): the caller must keep looking itself."""
    global _inotify
    path = Path(path).absolute()
    with _lock:
        if _inotify is None:
            _inotify = _open_inotify()
        if _inotify is None:
            return None
        folder = _inotify.add(path, listener)
        if folder is None:
            return None
        return FileWatch(_inotify, folder, os.fsencode(path.name), listener)
