"""A minimal inotify binding through ctypes (libc's three calls; no new dependency).

Only what the cgroup watcher needs: directory create/delete/move events and queue overflow.
The fd is non-blocking and close-on-exec; callers poll it and call :meth:`Inotify.read`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from dataclasses import dataclass

IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_IGNORED = 0x00008000  # the watch is gone (its directory was removed)
IN_Q_OVERFLOW = 0x00004000  # events were lost: the caller must rescan
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

DIR_EVENTS = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len (struct inotify_event)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]


@dataclass(frozen=True, slots=True)
class Event:
    """One inotify event; ``name`` is the entry in the watched directory (``""`` for self)."""

    wd: int
    mask: int
    name: str


class Inotify:
    """An inotify instance: add/remove directory watches, read batches of events."""

    def __init__(self) -> None:
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd = fd

    def add_dir(self, path: str, mask: int = DIR_EVENTS) -> int:
        """Watch one directory (never through a symlink); returns the watch descriptor.

        Raises OSError: ENOSPC when ``fs.inotify.max_user_watches`` is reached, ENOENT when the
        directory vanished meanwhile.
        """
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(path),
                                     mask | IN_ONLYDIR | IN_DONT_FOLLOW)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_add_watch {path}: {os.strerror(err)}")
        return wd

    def remove(self, wd: int) -> None:
        """Drop a watch; a watch the kernel already dropped (EINVAL) is fine."""
        if _libc.inotify_rm_watch(self.fd, wd) < 0 and ctypes.get_errno() != errno.EINVAL:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_rm_watch: {os.strerror(err)}")

    def read(self) -> list[Event]:
        """Every event queued now (``[]`` when none)."""
        try:
            buf = os.read(self.fd, 64 * 1024)
        except BlockingIOError:
            return []
        events, off = [], 0
        while off + _HEADER.size <= len(buf):
            wd, mask, _cookie, length = _HEADER.unpack_from(buf, off)
            off += _HEADER.size
            name = buf[off:off + length].split(b"\0", 1)[0]
            off += length
            events.append(Event(wd, mask, os.fsdecode(name)))
        return events

    def close(self) -> None:
        """Close the fd (drops every watch)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
