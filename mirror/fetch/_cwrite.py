"""Bodies written by libcurl itself (stdio `fwrite` into a buffered FILE on a slot fd), not by
a Python callback.

Why: libcurl hands a body to its write callback in pieces of at most 16 KiB (its
CURL_MAX_WRITE_SIZE, whatever the receive buffer), so a Python WRITEFUNCTION costs a call, a
bytes object and a `write` syscall per 16 KiB: ~64,000 of each per GB. Pointing the handle's
CURLOPT_WRITEFUNCTION at libc's `fwrite` and CURLOPT_WRITEDATA at a FILE with a large buffer on
the slot fd makes the whole per-chunk path C, with one `write` per buffer.

pycurl has no API for this, so the easy handle's `CURL *` is read from the pycurl object (the
field after PyObject_HEAD, dict and weakreflist, as in pycurl's `CurlObject` since 7.19) and
accepted only if it carries libcurl's easy-handle magic number; anything unexpected (another
layout, no libc or libcurl symbols) makes `attach` return None and the caller keeps its Python
callback. Buffered bytes reach the file only on `flush`: a kill -9 loses at most one buffer of a
partial file, whose size on disk is what a resume starts from.
"""

from __future__ import annotations

import ctypes
import os
import weakref

import pycurl

_MAGIC = 0xC0DEDBAD  # CURLEASY_MAGIC_NUMBER: the first field of libcurl's easy handle
_HANDLE_OFFSET = 4 * ctypes.sizeof(ctypes.c_void_p)  # ob_refcnt, ob_type, dict, weakreflist
_IOFBF = 0


class _Libs:
    """The few C functions used here: libc's stdio and the libcurl that pycurl runs on."""

    def __init__(self, libc: ctypes.CDLL, curl: ctypes.CDLL) -> None:
        self.setopt = curl.curl_easy_setopt
        self.setopt.restype = ctypes.c_int
        self.fdopen = libc.fdopen
        self.fdopen.restype, self.fdopen.argtypes = ctypes.c_void_p, [ctypes.c_int, ctypes.c_char_p]
        self.setvbuf = libc.setvbuf
        self.setvbuf.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
        self.fflush, self.fclose, self.ferror = libc.fflush, libc.fclose, libc.ferror
        self.clearerr, self.fpurge = libc.clearerr, libc["__fpurge"]
        for f in (self.fflush, self.fclose, self.ferror, self.clearerr, self.fpurge):
            f.argtypes = [ctypes.c_void_p]
        self.fwrite = ctypes.cast(libc.fwrite_unlocked, ctypes.c_void_p)  # one thread per FILE


def _load() -> _Libs | None:
    """The C functions, if this process has exactly one libcurl mapped (pycurl's)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/libcurl" in line}
        if len(paths) != 1:
            return None
        return _Libs(ctypes.CDLL(None, use_errno=True), ctypes.CDLL(paths.pop()))
    except (OSError, AttributeError):
        return None


def _layout_known() -> bool:
    """pycurl's CurlObject starts PyObject_HEAD, dict, weakreflist, CURL * in every release
    from 7.19 to the 7.x of today; another major version may not, and a wrong guess would
    read a stray pointer: only known versions are used."""
    try:
        version = tuple(int(p) for p in pycurl.version.split()[0].split("/")[1].split(".")[:2])
    except (IndexError, ValueError):
        return False
    return (7, 19) <= version < (8, 0)


_LIBS = _load() if _layout_known() else None
_OPEN: weakref.WeakSet[CWriter] = weakref.WeakSet()


def _forget_buffers_in_child() -> None:
    """A forked child that exits through libc's exit() would flush every stdio buffer into
    the fds it inherited: the parent's unwritten body bytes would land in its files twice."""
    if _LIBS is not None:
        for writer in list(_OPEN):
            _LIBS.fpurge(writer.fp)


os.register_at_fork(after_in_child=_forget_buffers_in_child)


class CWriter:
    """A buffered libc FILE on `fd` that libcurl writes a handle's body into; see module doc."""

    __slots__ = ("fp", "fd", "__weakref__")

    def __init__(self, fp: int, fd: int) -> None:
        self.fp, self.fd = fp, fd
        _OPEN.add(self)

    def flush(self) -> OSError | None:
        """Write out the buffer; on failure drop it (the transfer is failed) and say why."""
        assert _LIBS is not None
        ctypes.set_errno(0)
        if _LIBS.fflush(self.fp) == 0 and not _LIBS.ferror(self.fp):
            return None
        err = ctypes.get_errno() or 5  # EIO when the failed write was libcurl's own fwrite
        _LIBS.fpurge(self.fp)
        _LIBS.clearerr(self.fp)
        return OSError(err, os.strerror(err))

    def close(self) -> None:
        """Drop unwritten bytes and close the FILE with its fd."""
        assert _LIBS is not None
        _OPEN.discard(self)
        _LIBS.fpurge(self.fp)
        _LIBS.fclose(self.fp)


def attach(curl: pycurl.Curl, template: int, buffer: int) -> CWriter | None:
    """Give `curl` a slot (a dup of `template`) that libcurl writes bodies to through a FILE
    with a `buffer`-byte buffer; None when that cannot be done safely here (the caller then
    makes its own slot and sets a WRITEFUNCTION, which also resets WRITEDATA)."""
    libs = _LIBS
    if libs is None:
        return None
    handle = ctypes.c_void_p.from_address(id(curl) + _HANDLE_OFFSET).value
    if not handle or ctypes.c_uint32.from_address(handle).value != _MAGIC:
        return None
    fd = os.dup(template)
    fp = libs.fdopen(fd, b"wb")
    if not fp:
        os.close(fd)
        return None
    writer, h = CWriter(fp, fd), ctypes.c_void_p(handle)
    if (libs.setvbuf(fp, None, _IOFBF, buffer) != 0
            or libs.setopt(h, ctypes.c_int(pycurl.WRITEDATA), ctypes.c_void_p(fp))
            or libs.setopt(h, ctypes.c_int(pycurl.WRITEFUNCTION), libs.fwrite)):
        writer.close()
        return None
    return writer
