"""
Shared memory for process workers: POSIX segments, the call arena a parent
fills for its child, the reply ring a child fills for its parent, and
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

__all__ = [
    "Segment", "CallArena", "ArenaReader", "ReplyRing", "ReplyRingWriter",
    "SharedArray",
]

#: Every segment name starts with this (``/dev/shm/aq-*`` on Linux).
NAME_PREFIX = "/aq-"
#: Offsets of allocated regions are multiples of this many bytes.
ALIGNMENT = 64
#: A CallArena grows by segments of a whole number of these bytes.
GROWTH_UNIT = 1 << 20
#: Bytes at the start of a reply ring segment holding its counters.
RING_HEADER_SIZE = 64

# The reply ring header: three native uint64, each read and written by a
# single aligned 8-byte access. The child alone writes WRITTEN, the parent
# alone writes CONSUMED: linear byte counts (WRITTEN - CONSUMED bytes are in
# use), the first only going back when the child takes back regions that it
# has not sent yet.
_WRITTEN, _CONSUMED, _CAPACITY = range(3)
# A frame has at most this many buffers by default, so a ring writer keeps
# that many allocations for a rollback (FrameReader's maxBuffers).
_ROLLBACK_DEPTH = 4096


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
            name = NAME_PREFIX + secrets.token_hex(8)
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
# The call arena (parent) and its reader (child)
# ---------------------------------------------------------------------------

class CallArena:
    """
    The shared memory where a parent places the large buffers of calls to
    one child: a list of segments (ids 0, 1, 2…) created on demand, with
    first-fit allocation of 64-byte aligned regions.
    """

    def __init__(self, initialSize=1 << 20):
        self._initialSize = _alignUp(
            _checkPositive("initialSize", initialSize), ALIGNMENT)
        self._segments = []
        self._regions = []      # per segment: sorted (offset, end) in use
        self._closed = False

    @property
    def segmentCount(self):
        """How many segments the arena has created so far."""
        return len(self._segments)

    def allocate(self, nbytes):
        """
        A region of ``nbytes`` bytes: ``(segment, offset, view)`` where
        ``view`` is a writable memoryview of exactly ``nbytes`` bytes.
        A new, larger segment is added when none has room.
        """
        if self._closed:
            raise RuntimeError("this CallArena is closed")
        nbytes = _checkPositive("nbytes", nbytes)
        size = _alignUp(nbytes, ALIGNMENT)
        for segment, regions in enumerate(self._regions):
            offset = self._firstFit(regions, size, self._segments[segment].size)
            if offset is not None:
                break
        else:
            segment, offset = self._addSegment(size), 0
        bisect.insort(self._regions[segment], (offset, offset + size))
        view = self._segments[segment].buffer[offset:offset + nbytes]
        return segment, offset, view

    def release(self, segment, offset):
        """Free the region that ``allocate`` placed at ``offset`` of
        ``segment``. After ``close`` this does nothing."""
        if self._closed:
            return
        regions = self._regions[segment] \
            if 0 <= segment < len(self._regions) else []
        position = bisect.bisect_left(regions, (offset,))
        if position == len(regions) or regions[position][0] != offset:
            raise ValueError("no region is allocated at offset {} of "
                             "segment {}".format(offset, segment))
        del regions[position]

    def segmentName(self, segment):
        """The name a child attaches segment number ``segment`` by."""
        return self._segments[segment].name

    def close(self):
        """Unlink and unmap every segment; allocating is then an error."""
        self._closed = True
        for segment in self._segments:
            segment.unlink()
            segment.close()
        self._regions = [[] for _ in self._segments]

    @staticmethod
    def _firstFit(regions, size, segmentSize):
        """The lowest offset with ``size`` free bytes, or None."""
        free = 0
        for start, end in regions:
            if start - free >= size:
                return free
            free = end
        return free if segmentSize - free >= size else None

    def _addSegment(self, size):
        """Create the next segment, with room for ``size`` bytes at least;
        returns its id."""
        if not self._segments and size <= self._initialSize:
            segmentSize = self._initialSize
        else:
            largest = max((s.size for s in self._segments), default=0)
            segmentSize = max(2 * largest, _alignUp(size, GROWTH_UNIT))
        self._segments.append(Segment.create(segmentSize))
        self._regions.append([])
        return len(self._segments) - 1


class ArenaReader:
    """
    The child's side of a CallArena: views of regions by segment name,
    attaching each segment on first use and keeping it mapped.
    """

    def __init__(self):
        self._segments = {}

    def view(self, name, offset, length):
        """A writable memoryview of ``length`` bytes at ``offset`` of
        segment ``name``."""
        segment = self._segments.get(name)
        if segment is None:
            segment = self._segments[name] = Segment.attach(name)
        if offset < 0 or length < 0 or offset + length > segment.size:
            raise ValueError(
                "region of {} bytes at offset {} lies outside segment {!r} "
                "of {} bytes".format(length, offset, name, segment.size))
        return segment.buffer[offset:offset + length]

    def close(self):
        """Unmap every attached segment (a later ``view`` attaches anew)."""
        segments, self._segments = self._segments, {}
        for segment in segments.values():
            segment.close()


# ---------------------------------------------------------------------------
# The reply ring: child (writer) to parent (owner)
# ---------------------------------------------------------------------------

def _placeRegion(position, size, capacity):
    """
    Where a ring region of ``size`` (aligned) bytes goes when the linear
    count of bytes written so far is ``position``: ``(offset, advance)``,
    skipping the tail of the ring when the region does not fit there.
    """
    offset = position % capacity
    tail = capacity - offset
    if size > tail:
        return 0, tail + size
    return offset, size


class _RingMapping:
    """A mapped reply ring segment: its header counters and data area."""

    def __init__(self, segment, capacity):
        if (capacity < ALIGNMENT or capacity % ALIGNMENT
                or capacity + RING_HEADER_SIZE > segment.size):
            segment.close()
            raise ValueError("segment {!r} is not a reply ring".format(
                segment.name))
        self._segment = segment
        self._counters = segment.buffer[:RING_HEADER_SIZE].cast("Q")
        self._data = segment.buffer[
            RING_HEADER_SIZE:RING_HEADER_SIZE + capacity]
        self._capacity = capacity

    @property
    def name(self):
        """The ring's segment name."""
        return self._segment.name

    @property
    def size(self):
        """Bytes in the ring's data area."""
        return self._capacity

    def close(self):
        """Unmap the ring."""
        self._counters.release()
        self._data.release()
        self._segment.close()


class ReplyRing(_RingMapping):
    """
    The parent's side of a reply ring, which it owns: the child places
    large reply buffers there, the parent copies them out and consumes
    them in the order they were written.
    """

    def __init__(self, segment, capacity):
        super().__init__(segment, capacity)
        self._counters[_CAPACITY] = capacity
        self._consumed = 0

    @classmethod
    def create(cls, size):
        """A new ring with a data area of ``size`` bytes (rounded up to a
        multiple of 64)."""
        capacity = _alignUp(_checkPositive("size", size), ALIGNMENT)
        return cls(Segment.create(RING_HEADER_SIZE + capacity), capacity)

    def view(self, offset, length):
        """A memoryview of the region of ``length`` bytes at ``offset``."""
        if offset < 0 or length < 0 or offset + length > self._capacity:
            raise ValueError("region of {} bytes at offset {} lies outside a "
                             "ring of {} bytes".format(
                                 length, offset, self._capacity))
        return self._data[offset:offset + length]

    def consume(self, offset, length):
        """Mark the region at ``offset`` as read; it must be the next
        unconsumed one, so that the child may write there again."""
        expected, advance = _placeRegion(
            self._consumed, _alignUp(_checkPositive("length", length),
                                     ALIGNMENT), self._capacity)
        if offset != expected:
            raise ValueError(
                "the region at offset {} is not the next unconsumed one, "
                "which is at offset {}".format(offset, expected))
        if self._consumed + advance > self._counters[_WRITTEN]:
            raise ValueError("the region at offset {} was never written"
                             .format(offset))
        self._consumed += advance
        self._counters[_CONSUMED] = self._consumed

    def close(self):
        """Unmap and unlink the ring (closing twice does nothing)."""
        if not self._segment.closed:
            super().close()
            self._segment.unlink()


class ReplyRingWriter(_RingMapping):
    """
    The child's side of a reply ring: regions for large reply buffers,
    handed out in order, contiguous, 64-byte aligned.
    """

    def __init__(self, segment, capacity):
        super().__init__(segment, capacity)
        self._written = self._counters[_WRITTEN]
        self._recent = deque(maxlen=_ROLLBACK_DEPTH)    # (offset, written)

    @classmethod
    def attach(cls, name):
        """Attach the ring that the parent created as ``name``."""
        segment = Segment.attach(name)
        capacity = 0
        if segment.size >= RING_HEADER_SIZE:
            with segment.buffer[:RING_HEADER_SIZE].cast("Q") as counters:
                capacity = counters[_CAPACITY]
        return cls(segment, capacity)

    def allocate(self, nbytes):
        """
        ``(0, offset, view)`` for a region of ``nbytes`` bytes, or None when
        the ring has no room for it now (unconsumed replies) or ever.
        """
        size = _alignUp(_checkPositive("nbytes", nbytes), ALIGNMENT)
        if size > self._capacity:
            return None
        offset, advance = _placeRegion(self._written, size, self._capacity)
        written = self._written + advance
        if written - self._counters[_CONSUMED] > self._capacity:
            return None
        self._recent.append((offset, self._written))
        self._written = self._counters[_WRITTEN] = written
        return 0, offset, self._data[offset:offset + nbytes]

    def release(self, segment, offset):
        """Take back the latest region (not yet sent to the parent): the
        undo of ``allocate``, for FrameWriter when pickling fails."""
        if segment != 0 or not self._recent or self._recent[-1][0] != offset:
            raise ValueError("only the latest region can be released, not "
                             "segment {} offset {}".format(segment, offset))
        self._written = self._counters[_WRITTEN] = self._recent.pop()[1]


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
