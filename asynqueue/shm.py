"""
Shared memory for process workers: POSIX segments, the call arena a parent
fills for its child, the reply arena a child fills for its parent (each
borrowing the other's buffers in place), and
SharedArray, a numpy array that other processes attach to by name.
Segments are opened through CPython's ``_posixshmem`` directly, so that
Python's resource tracker never sees them (cpython#82300) and only their
creator ever unlinks them.
"""
import atexit
import bisect
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

from ._speedups import framing

__all__ = [
    "Segment", "CallArena", "ArenaReader", "ReplyArena", "ReplyArenaWriter",
    "SharedArray", "borrow", "sweepOrphans",
]

#: Every segment name starts with this (``/dev/shm/aq-*`` on Linux).
NAME_PREFIX = "/aq-"
#: Where Linux lists shared memory segments.
SHM_DIRECTORY = "/dev/shm"
#: Offsets of allocated regions are multiples of this many bytes.
ALIGNMENT = 64
#: A CallArena grows by segments of a whole number of these bytes.
GROWTH_UNIT = 1 << 20
#: Bytes before every arena region: the first is set by the borrower when it
#: gives the region back.
REGION_HEADER = 64


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
# Lent regions: the arenas
# ---------------------------------------------------------------------------

def regionSize(nbytes):
    """The bytes an arena region of ``nbytes`` takes: its header, then the
    data rounded up to the alignment."""
    return REGION_HEADER + _alignUp(nbytes, ALIGNMENT)


def _firstFit(used, size, areaSize):
    """The lowest start with ``size`` free bytes among the sorted ``used``
    (start, end) pairs of an area of ``areaSize`` bytes, or None."""
    free = 0
    for start, end in used:
        if start - free >= size:
            return free
        free = end
    return free if areaSize - free >= size else None


class _Regions:
    """
    First-fit regions of one mapped area, each lent to the other process
    once allocated: a region follows a header of REGION_HEADER bytes whose
    first byte the borrower sets (see ``borrow``) when it is done with it,
    and the lender takes it back at its next allocation.
    """

    __slots__ = ("_area", "_used", "_lent")

    def __init__(self, area):
        self._area = area
        self._used = []         # sorted (start, end) of every region
        self._lent = {}         # data offset -> (start, borrower)

    def allocate(self, nbytes, borrower=None):
        """``(offset, view)`` of a new region of ``nbytes`` bytes, or None
        when the area has no room for it."""
        self.reclaim()
        size = regionSize(nbytes)
        start = _firstFit(self._used, size, len(self._area))
        if start is None:
            return None
        bisect.insort(self._used, (start, start + size))
        self._area[start] = 0
        offset = start + REGION_HEADER
        self._lent[offset] = (start, borrower)
        return offset, self._area[offset:offset + nbytes]

    def release(self, offset):
        """Free the region at ``offset`` now, given back or not."""
        entry = self._lent.pop(offset, None)
        if entry is None:
            return False
        del self._used[bisect.bisect_left(self._used, (entry[0],))]
        return True

    def reclaim(self):
        """Free every region that its borrower has given back."""
        area = self._area
        for offset in [offset for offset, (start, _) in self._lent.items()
                       if area[start]]:
            self.release(offset)

    def releaseBorrower(self, borrower):
        """Free every region lent to ``borrower`` (which has died)."""
        for offset in [offset for offset, (_, who) in self._lent.items()
                       if who is borrower]:
            self.release(offset)

    def __len__(self):
        """How many regions are lent."""
        return len(self._lent)


def _giveBack(flag):
    flag[0] = 1


def borrow(area, offset, length):
    """
    The region of ``length`` bytes at ``offset`` of a lender's ``area``, as
    a writable buffer: the shared memory itself, given back to the lender
    when the last array made from it is gone, so that nothing is copied.
    The lease is a numpy array (out-of-band buffers come from numpy
    arrays, so numpy is there); without numpy, a private copy, and the
    region is given back at once.
    """
    if offset < REGION_HEADER or length < 0 or offset + length > len(area):
        raise ValueError(
            "region of {} bytes at offset {} lies outside an area of {} "
            "bytes".format(length, offset, len(area)))
    flag = area[offset - REGION_HEADER:offset - REGION_HEADER + 1]
    numpy = _numpy()
    if numpy is None or not length:
        copy = framing.copyOut(area[offset:offset + length])
        flag[0] = 1
        return copy
    lease = numpy.frombuffer(area[offset:offset + length], numpy.uint8)
    weakref.finalize(lease, _giveBack, flag).atexit = False
    return memoryview(lease)


def _numpy():
    """numpy, imported on first use; None where it is not installed."""
    try:
        import numpy
    except ImportError:
        return None
    return numpy


class CallArena:
    """
    The shared memory where a parent places the large buffers of calls to
    its child: segments (ids 0, 1, 2…) created on demand, each holding
    first-fit regions that the child borrows in place and gives back when
    done with them.
    """

    def __init__(self, initialSize=1 << 20):
        self._initialSize = _alignUp(
            _checkPositive("initialSize", initialSize), ALIGNMENT)
        self._segments = []
        self._regions = []
        self._closed = False

    @property
    def segmentCount(self):
        """How many segments the arena has created so far."""
        return len(self._segments)

    @property
    def lentCount(self):
        """How many regions are lent and not yet taken back."""
        for regions in self._regions:
            regions.reclaim()
        return sum(len(regions) for regions in self._regions)

    def allocate(self, nbytes, borrower=None):
        """
        A region of ``nbytes`` bytes lent to ``borrower``: ``(segment,
        offset, view)`` where ``view`` is a writable memoryview of exactly
        ``nbytes`` bytes. A new, larger segment is added when none has room.
        """
        if self._closed:
            raise RuntimeError("this CallArena is closed")
        nbytes = _checkPositive("nbytes", nbytes)
        for segment, regions in enumerate(self._regions):
            region = regions.allocate(nbytes, borrower)
            if region is not None:
                return (segment,) + region
        segment = self._addSegment(regionSize(nbytes))
        return (segment,) + self._regions[segment].allocate(nbytes, borrower)

    def release(self, segment, offset):
        """Free the region at ``offset`` of ``segment`` now (a frame that
        was never sent). After ``close`` this does nothing."""
        if self._closed:
            return
        if not (0 <= segment < len(self._regions)
                and self._regions[segment].release(offset)):
            raise ValueError("no region is allocated at offset {} of "
                             "segment {}".format(offset, segment))

    def releaseBorrower(self, borrower):
        """Free every region lent to ``borrower``, a child that has ended."""
        for regions in self._regions:
            regions.releaseBorrower(borrower)

    def segmentName(self, segment):
        """The name a child attaches segment number ``segment`` by."""
        return self._segments[segment].name

    def close(self):
        """Unlink and unmap every segment; allocating is then an error."""
        self._closed = True
        for segment in self._segments:
            segment.unlink()
            segment.close()
        self._regions = []

    def _addSegment(self, size):
        """Create the next segment, with room for ``size`` bytes at least;
        returns its id."""
        if not self._segments and size <= self._initialSize:
            segmentSize = self._initialSize
        else:
            largest = max((s.size for s in self._segments), default=0)
            segmentSize = max(2 * largest, _alignUp(size, GROWTH_UNIT))
        segment = Segment.create(segmentSize)
        self._segments.append(segment)
        self._regions.append(_Regions(segment.buffer))
        return len(self._segments) - 1


class ArenaReader:
    """
    The child's side of a CallArena: borrows regions by segment name,
    attaching each segment on first use and keeping it mapped.
    """

    def __init__(self):
        self._segments = {}

    def borrow(self, name, offset, length):
        """The region of ``length`` bytes at ``offset`` of segment
        ``name``, borrowed (see ``borrow``)."""
        segment = self._segments.get(name)
        if segment is None:
            segment = self._segments[name] = Segment.attach(name)
        return borrow(segment.buffer, offset, length)

    def close(self):
        """Unmap every attached segment (once no borrowed region is in use;
        a later ``borrow`` attaches anew)."""
        segments, self._segments = self._segments, {}
        for segment in segments.values():
            segment.close()


# ---------------------------------------------------------------------------
# The reply arena: child (lender) to parent (owner, borrower)
# ---------------------------------------------------------------------------

class ReplyArena:
    """
    The parent's side of a reply arena, a segment it owns and the child
    fills: the parent borrows each reply buffer in place (see ``borrow``).
    """

    def __init__(self, segment):
        self._segment = segment

    @classmethod
    def create(cls, size):
        """A new arena of ``size`` bytes (rounded up to a multiple of
        64)."""
        return cls(Segment.create(
            _alignUp(_checkPositive("size", size), ALIGNMENT)))

    @property
    def name(self):
        return self._segment.name

    @property
    def size(self):
        return self._segment.size

    def borrow(self, offset, length):
        """The reply buffer of ``length`` bytes at ``offset``."""
        return borrow(self._segment.buffer, offset, length)

    def close(self):
        """Unlink the arena; it is unmapped once no borrowed buffer is in
        use. Closing twice does nothing."""
        if not self._segment.closed:
            self._segment.unlink()
            self._segment.close()


class ReplyArenaWriter:
    """
    The child's side of a reply arena: regions for large reply buffers,
    lent to the parent, taken back once it has given them back.
    """

    def __init__(self, segment):
        self._segment = segment
        self._regions = _Regions(segment.buffer)

    @classmethod
    def attach(cls, name):
        """Attach the arena that the parent created as ``name``."""
        return cls(Segment.attach(name))

    @property
    def name(self):
        return self._segment.name

    @property
    def size(self):
        return self._segment.size

    def allocate(self, nbytes):
        """``(0, offset, view)`` for a region of ``nbytes`` bytes, or None
        when the arena has no room for it now (lent replies) or ever."""
        region = self._regions.allocate(_checkPositive("nbytes", nbytes))
        return None if region is None else (0,) + region

    def release(self, segment, offset):
        """Take back a region not sent to the parent (FrameWriter's undo
        when pickling fails)."""
        if segment != 0 or not self._regions.release(offset):
            raise ValueError("no region is allocated at offset {} of "
                             "segment {}".format(offset, segment))

    def close(self):
        """Unmap the arena."""
        self._regions = None
        self._segment.close()


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


def _closeAllOwned():
    """Free every SharedArray this process still owns."""
    for name in list(_owned):
        _closeOwned(name)


atexit.register(_closeAllOwned)


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
        _closeAllOwned()

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
