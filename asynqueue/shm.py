"""
Shared memory: POSIX segments named after their creator (so that those of
a crashed one can be swept), and SharedArray, a numpy array that other
processes attach to by name.
Segments are opened through CPython's ``_posixshmem`` directly, so that
Python's resource tracker never sees them (cpython#82300) and only their
creator ever unlinks them.
"""
import atexit
import ctypes
import math
import mmap
import os
import secrets
import threading
import weakref
from collections import deque
from operator import index

import _posixshmem

__all__ = ["Segment", "SharedArray", "sweepOrphans"]

#: Every segment name starts with this (``/dev/shm/aq-*`` on Linux).
NAME_PREFIX = "/aq-"
#: Where Linux lists shared memory segments.
SHM_DIRECTORY = "/dev/shm"


def _checkPositive(what, value):
    """``value`` as an int, or ValueError unless it is at least 1."""
    number = index(value)
    if number < 1:
        raise ValueError("{} must be a positive integer, not {!r}".format(
            what, value))
    return number


def _alignUp(number, unit):
    """``number`` rounded up to a multiple of ``unit``."""
    return -(-number // unit) * unit


def _unlinkName(name, creatorPID):
    """Unlink segment ``name`` if this is the process that created it (a
    forked copy of the creator must not)."""
    if os.getpid() == creatorPID:
        try:
            _posixshmem.shm_unlink(name)
        except FileNotFoundError:
            pass


def _base36(number):
    """``number`` (not negative) in base 36, lowercase."""
    digits = ""
    while True:
        number, digit = divmod(number, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[digit] + digits
        if not number:
            return digits


def _pidNamespace():
    """This process's PID namespace, in base 36 ("0" if unknown): pids in
    segment names mean something only within it."""
    try:
        return _base36(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "0"


_NAMESPACE = _pidNamespace()


def _newName():
    """A fresh segment name that says who created it: ``/aq-`` + PID
    namespace + pid + random, within macOS's 31 characters."""
    return "{}{}-{}-{}".format(NAME_PREFIX, _NAMESPACE, _base36(os.getpid()),
                               secrets.token_hex(4))


def _alive(pid):
    """Whether process ``pid`` exists (it may be another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass
    return True


def sweepOrphans():
    """
    Unlink every segment whose creator, a process of this PID namespace,
    has died without freeing it (killed by SIGKILL, say): process workers
    call this as they start and stop, so that no crash leaves memory
    behind for long. Returns the names unlinked.
    """
    try:
        entries = os.listdir(SHM_DIRECTORY)
    except OSError:
        return []
    swept = []
    for entry in entries:
        parts = entry.split("-")
        if len(parts) != 4 or parts[0] != NAME_PREFIX[1:-1] or \
                parts[1] != _NAMESPACE:
            continue
        try:
            pid = int(parts[2], 36)
        except ValueError:
            continue
        if pid != os.getpid() and not _alive(pid):
            try:
                _posixshmem.shm_unlink("/" + entry)
            except OSError:
                continue
            swept.append("/" + entry)
    return swept


# ---------------------------------------------------------------------------
# Segment
# ---------------------------------------------------------------------------

class Segment:
    """
    One POSIX shared memory segment, mapped read-write. ``create`` makes
    a new one (owned: this process unlinks it); ``attach`` maps an
    existing one by name.
    """

    __slots__ = ("name", "size", "owned", "address", "buffer", "_mmap",
                 "_unlinker", "__weakref__")

    def __init__(self, name, descriptor, size, owned):
        """Map ``size`` bytes of the open shared memory ``descriptor``
        (use ``create`` or ``attach``)."""
        self._mmap = mmap.mmap(descriptor, size)
        self.name = name
        self.size = size
        self.owned = owned
        self.address = ctypes.addressof(ctypes.c_char.from_buffer(self._mmap))
        self.buffer = memoryview(self._mmap)
        self._unlinker = weakref.finalize(
            self, _unlinkName, name, os.getpid()) if owned else None

    @classmethod
    def create(cls, size):
        """A new zero-filled segment of ``size`` bytes, owned by this
        process; it is unlinked by ``unlink`` or at the latest at exit."""
        size = _checkPositive("size", size)
        while True:
            name = _newName()
            try:
                descriptor = _posixshmem.shm_open(
                    name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
            except FileExistsError:
                continue
            break
        try:
            os.ftruncate(descriptor, size)
            return cls(name, descriptor, size, owned=True)
        except BaseException:
            _posixshmem.shm_unlink(name)
            raise
        finally:
            os.close(descriptor)

    @classmethod
    def attach(cls, name):
        """Map the existing segment ``name``, whole; never unlinks it."""
        try:
            descriptor = _posixshmem.shm_open(name, os.O_RDWR, mode=0o600)
        except FileNotFoundError:
            raise FileNotFoundError(
                "no shared memory segment {!r}: its owner has already "
                "freed it".format(name)) from None
        try:
            return cls(name, descriptor, os.fstat(descriptor).st_size,
                       owned=False)
        finally:
            os.close(descriptor)

    @property
    def closed(self):
        """Whether ``close`` was called."""
        return self._mmap is None

    def close(self):
        """
        Drop this object's mapping; ``buffer`` becomes None. It is unmapped
        at once, or (while views or arrays of it are alive) when the last of
        them goes, so nothing is ever unmapped under a user. Closing twice
        does nothing.
        """
        self._mmap = self.buffer = None

    def unlink(self):
        """Remove the segment's name, so that its memory is freed once
        nobody maps it. Only its owner may; unlinking twice does nothing."""
        if not self.owned:
            raise ValueError(
                "only the process that created segment {!r} may unlink "
                "it".format(self.name))
        self._unlinker()

    def __repr__(self):
        return "<Segment {} of {} bytes, {}{}>".format(
            self.name, self.size, "owned" if self.owned else "attached",
            ", closed" if self.closed else "")


# ---------------------------------------------------------------------------
# SharedArray
# ---------------------------------------------------------------------------
# numpy is imported only when SharedArray is first used, so that a child
# process that never sees one starts without it (numpy's import costs
# about 90 ms). The class is built then from _SharedArrayMethods.

#: name -> Segment of every SharedArray this process created and not closed.
_owned = {}
#: name -> Segment attached to unpickle arrays; gone with the last of them.
_attached = weakref.WeakValueDictionary()
#: The segments attached last, kept mapped even while no array uses them.
_recentlyAttached = deque(maxlen=4)
#: The methods of ndarray whose results are wrapped by ``_plainUnlessShared``.
_COPYING_METHODS = ("copy", "astype", "flatten", "ravel", "__copy__",
                    "__deepcopy__")
#: Held while the SharedArray class is built, so that it is built once.
_classLock = threading.Lock()


def __getattr__(name):
    """Builds ``SharedArray`` on first access (PEP 562)."""
    if name == "SharedArray":
        return _sharedArrayClass()
    raise AttributeError("module {!r} has no attribute {!r}".format(
        __name__, name))


def _sharedArrayClass():
    """The SharedArray class, built (and numpy imported) on first call."""
    with _classLock:
        cls = globals().get("SharedArray")
        if cls is None:
            cls = globals()["SharedArray"] = _buildSharedArrayClass()
    return cls


def _buildSharedArrayClass():
    """SharedArray: ndarray with the methods of _SharedArrayMethods."""
    import numpy
    namespace = {name: _demoting(getattr(numpy.ndarray, name))
                 for name in _COPYING_METHODS}
    namespace.update(__slots__=("_segment",), __module__=__name__,
                     __qualname__="SharedArray",
                     __doc__=_SharedArrayMethods.__doc__)
    return type("SharedArray", (_SharedArrayMethods, numpy.ndarray),
                namespace)


def _demoting(method):
    """``method`` of ndarray, returning plain arrays for private memory."""
    def demoted(self, *args, **kwargs):
        return _plainUnlessShared(method(self, *args, **kwargs))
    demoted.__name__ = method.__name__
    demoted.__doc__ = method.__doc__
    return demoted


def _plainUnlessShared(array):
    """``array``, as a plain ndarray if it is a SharedArray whose memory is
    private (a copy)."""
    import numpy
    if isinstance(array, _SharedArrayMethods) and array._segment is None:
        return array.view(numpy.ndarray)
    return array


def _inSegment(array, segment):
    """Whether every byte of ``array`` lies in the mapping of ``segment``."""
    from numpy.lib.array_utils import byte_bounds
    low, high = byte_bounds(array)
    return segment.address <= low and high <= segment.address + segment.size


def _arrayIn(segment, offset, shape, strides, dtype):
    """A SharedArray of the memory at ``offset`` of ``segment`` (its base
    is the segment's mmap, which stays mapped while the array lives)."""
    import numpy
    array = numpy.ndarray.__new__(
        _sharedArrayClass(), shape, dtype, buffer=segment.buffer,
        offset=offset, strides=strides)
    array._segment = segment
    return array


def _attachArray(name, offset, shape, strides, dtype):
    """
    Unpickle a SharedArray: the owner's mapping in the owning process,
    else one attached (once per process) for as long as arrays use it; the
    last few attached stay mapped a while longer, so that a worker called
    again and again with the same SharedArray maps (and page-faults) it
    only once.
    """
    segment = _owned.get(name) or _attached.get(name)
    if segment is None:
        segment = _attached[name] = Segment.attach(name)
        _recentlyAttached.append(segment)
    return _arrayIn(segment, offset, shape, strides, dtype)


def _closeOwned(name):
    """Unlink and unmap the owned segment ``name``, if still open."""
    segment = _owned.pop(name, None)
    if segment is not None:
        segment.unlink()
        segment.close()


def closeAllOwned():
    """Free every SharedArray this process still owns (without importing
    numpy, which no SharedArray was made without)."""
    for name in list(_owned):
        _closeOwned(name)


atexit.register(closeAllOwned)


class _SharedArrayMethods:
    """
    A numpy array in shared memory that pickles as a small descriptor
    (segment name, offset, shape, strides, dtype), so that another process
    unpickles it as the very same memory, without a copy. Its creator owns
    it and frees it with ``close()`` or a ``with`` block; views and slices
    are SharedArrays too, while results in private memory (``a + 1``,
    ``a.copy()``) are plain ndarrays.
    """

    __slots__ = ()

    def __new__(cls, shape, dtype=float):
        """A zero-filled array of ``shape`` and ``dtype``, owned."""
        import numpy
        dtype = numpy.dtype(dtype)
        if dtype.hasobject:
            raise TypeError("a SharedArray cannot hold Python objects "
                            "(dtype {})".format(dtype))
        try:
            shape = (index(shape),)
        except TypeError:
            shape = tuple(index(n) for n in shape)
        if any(n < 0 for n in shape):
            raise ValueError("negative dimensions are not allowed: {}".format(
                shape))
        segment = Segment.create(max(math.prod(shape) * dtype.itemsize, 1))
        _owned[segment.name] = segment
        return _arrayIn(segment, 0, shape, None, dtype)

    @classmethod
    def fromArray(cls, array):
        """An owned SharedArray holding a copy of ``array``."""
        import numpy
        array = numpy.asarray(array)
        shared = cls(array.shape, array.dtype)
        shared[...] = array
        return shared

    @classmethod
    def closeAll(cls):
        """Free every SharedArray this process still owns (also done at
        exit)."""
        closeAllOwned()

    @property
    def segment(self):
        """The Segment this array lives in, or None for private memory."""
        return self._segment

    @property
    def owned(self):
        """Whether this process created (and so frees) the memory."""
        return self._segment is not None and self._segment.owned

    def close(self):
        """
        Free the memory (owner only; for an attached array this does
        nothing): its name is unlinked at once, and it is unmapped when no
        array of this process uses it any more.
        """
        if self.owned:
            _closeOwned(self._segment.name)

    def __enter__(self):
        return self

    def __exit__(self, *exception):
        self.close()

    def __array_finalize__(self, obj):
        segment = getattr(obj, "_segment", None)
        self._segment = segment \
            if segment is not None and _inSegment(self, segment) else None

    def __array_wrap__(self, array, context=None, return_scalar=False):
        if getattr(array, "_segment", None) is None:
            array = _plainUnlessShared(array)
            return array[()] if return_scalar else array
        return super().__array_wrap__(array, context, return_scalar)

    def __reduce_ex__(self, protocol):
        import numpy
        segment = self._segment
        if segment is None or not _inSegment(self, segment):
            return self.view(numpy.ndarray).__reduce_ex__(protocol)
        if segment.closed:
            raise ValueError(
                "cannot pickle a SharedArray whose owner has closed it; "
                "pickle a private copy (numpy.array(a)) instead")
        offset = self.__array_interface__["data"][0] - segment.address
        return _attachArray, (segment.name, offset, self.shape, self.strides,
                              self.dtype)
