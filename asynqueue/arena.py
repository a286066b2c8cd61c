"""
The arenas through which process workers pass large buffers: the call
arena a parent fills for its child and the reply arena a child fills for
its parent. The filling side lends first-fit regions; the other side
borrows each in place and gives it back when its last array is gone, by
setting a byte in the region's header, so that a buffer is copied once
each way and never out again.

A child whose numpy arrays are born in its reply arena (see
``_speedups/allocator``) sends a result array's own region, with no copy
at all: such a region is *owned* by numpy until the second header byte
says numpy freed it, and is free again once both bytes are set.
"""
import bisect
import os
import weakref

from ._speedups import framing
from .shm import Segment, _alignUp, _checkPositive

__all__ = ["CallArena", "ArenaReader", "ReplyArena", "ReplyArenaWriter",
           "borrow", "regionSize"]

#: Offsets of allocated regions are multiples of this many bytes.
ALIGNMENT = 64
#: A CallArena grows by segments of a whole number of these bytes.
GROWTH_UNIT = 1 << 20
#: Bytes before every region: the first is set by the borrower when it
#: gives the region back (and is 1 while the region is not lent), the
#: second when the lender's numpy frees an owned region (1 for others);
#: bytes 8 to 16 hold an owned region's size.
REGION_HEADER = 64
#: Header bytes: given back by the borrower; freed by its owner.
GIVEN_BACK, OWNER_DONE = 0, 1
#: Where the header of an owned region keeps its size (8 bytes).
SIZE_AT = 8


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
        """``(offset, view)`` of a new region of ``nbytes`` bytes, lent,
        or None when the area has no room for it."""
        start = self._place(nbytes, borrower)
        if start is None:
            return None
        self._area[start:start + 2] = b"\x00\x01"
        offset = start + REGION_HEADER
        return offset, self._area[offset:offset + nbytes]

    def allocateOwned(self, nbytes):
        """The offset of a new region of ``nbytes`` bytes that numpy owns
        until it sets OWNER_DONE (not lent), or None when there is no
        room."""
        start = self._place(nbytes, None)
        if start is None:
            return None
        area = self._area
        area[start:start + 2] = b"\x01\x00"
        area[start + SIZE_AT:start + SIZE_AT + 8] = nbytes.to_bytes(8, "little")
        return start + REGION_HEADER

    def _place(self, nbytes, borrower):
        """The start of a new region's header, or None."""
        self.reclaim()
        size = regionSize(nbytes)
        start = _firstFit(self._used, size, len(self._area))
        if start is None:
            return None
        bisect.insort(self._used, (start, start + size))
        self._lent[start + REGION_HEADER] = (start, borrower)
        return start

    def lendable(self, offset):
        """True if ``offset`` is that of an owned region that numpy holds
        and that is not lent."""
        return self.ownerHolds(offset) and \
            bool(self._area[self._lent[offset][0] + GIVEN_BACK])

    def lendOwned(self, offset):
        """Lend the owned region at ``offset`` as it is."""
        self._area[self._lent[offset][0] + GIVEN_BACK] = 0

    def ownerHolds(self, offset):
        """True while numpy holds the owned region at ``offset``."""
        entry = self._lent.get(offset)
        return entry is not None and not self._area[entry[0] + OWNER_DONE]

    def owned(self):
        """How many regions numpy still owns."""
        area = self._area
        return sum(1 for start, _ in self._lent.values()
                   if not area[start + OWNER_DONE])

    def release(self, offset):
        """Free the region at ``offset`` now, given back or not; an owned
        region that numpy still holds is only no longer lent."""
        entry = self._lent.get(offset)
        if entry is None:
            return False
        if not self._area[entry[0] + OWNER_DONE]:
            self._area[entry[0] + GIVEN_BACK] = 1
            return True
        del self._lent[offset]
        del self._used[bisect.bisect_left(self._used, (entry[0],))]
        return True

    def reclaim(self):
        """Free every region that its borrower has given back and its
        owner, if any, has freed."""
        area = self._area
        for offset in [offset for offset, (start, _) in self._lent.items()
                       if area[start + GIVEN_BACK] and area[start + OWNER_DONE]]:
            self.release(offset)

    def releaseBorrower(self, borrower):
        """Free every region lent to ``borrower`` (which has died)."""
        for offset in [offset for offset, (_, who) in self._lent.items()
                       if who is borrower]:
            self.release(offset)

    def __len__(self):
        """How many regions are lent."""
        return len(self._lent)


def _giveBack(flag, borrowerPID):
    """Tell the lender that a region is free, unless this is a forked copy
    of the borrower (the borrower itself may still use the region)."""
    if os.getpid() == borrowerPID:
        flag[0] = 1


def borrow(area, offset, length):
    """
    The region of ``length`` bytes at ``offset`` of a lender's ``area``, as
    a writable buffer: the shared memory itself, given back to the lender
    when the last array made from it is gone, so that nothing is copied.
    The lease is a numpy array (out-of-band buffers come from numpy
    arrays, so numpy is there); without numpy, a private copy, and the
    region is given back at once. So is, should one ever arrive, an owned
    region that the lender's numpy still holds (a child copies a reply
    array its call kept before sending): the borrower's array is private.
    """
    if offset < REGION_HEADER or length < 0 or offset + length > len(area):
        raise ValueError(
            "region of {} bytes at offset {} lies outside an area of {} "
            "bytes".format(length, offset, len(area)))
    flag = area[offset - REGION_HEADER:offset - REGION_HEADER + 1]
    numpy = _numpy()
    if numpy is None or not length or \
            not area[offset - REGION_HEADER + OWNER_DONE]:
        copy = framing.copyOut(area[offset:offset + length])
        flag[0] = 1
        return copy
    lease = numpy.frombuffer(area[offset:offset + length], numpy.uint8)
    weakref.finalize(lease, _giveBack, flag, os.getpid()).atexit = False
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

class _ReplyArenaSide:
    """A process's mapping of a reply arena."""

    def __init__(self, segment):
        self._segment = segment

    @property
    def name(self):
        return self._segment.name

    @property
    def size(self):
        return self._segment.size


class ReplyArena(_ReplyArenaSide):
    """
    The parent's side of a reply arena, a segment it owns and the child
    fills: the parent borrows each reply buffer in place (see ``borrow``).
    """

    @classmethod
    def create(cls, size):
        """A new arena of ``size`` bytes (rounded up to a multiple of
        64)."""
        return cls(Segment.create(
            _alignUp(_checkPositive("size", size), ALIGNMENT)))

    def borrow(self, offset, length):
        """The reply buffer of ``length`` bytes at ``offset``."""
        return borrow(self._segment.buffer, offset, length)

    def close(self):
        """Unlink the arena; it is unmapped once no borrowed buffer is in
        use. Closing twice does nothing."""
        if not self._segment.closed:
            self._segment.unlink()
            self._segment.close()


class ReplyArenaWriter(_ReplyArenaSide):
    """
    The child's side of a reply arena: regions for large reply buffers,
    lent to the parent, taken back once it has given them back.
    """

    def __init__(self, segment):
        _ReplyArenaSide.__init__(self, segment)
        self._regions = _Regions(segment.buffer)
        self._allocator = self._address = None

    @classmethod
    def attach(cls, name):
        """Attach the arena that the parent created as ``name``."""
        return cls(Segment.attach(name))

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

    def hostArrays(self, allocator):
        """Let numpy arrays be born here, through ``allocator`` (the
        compiled ``_speedups.allocator``)."""
        self._allocator = allocator
        self._address = allocator.addArea(self._segment.buffer)

    @property
    def address(self):
        """Where the arena is mapped, while numpy arrays may be born in it;
        else None."""
        return self._address

    def allocateOwned(self, nbytes):
        """The address of a new region of ``nbytes`` bytes for a numpy
        array, or 0 when there is no room (or no hosting)."""
        if self._address is None:
            return 0
        offset = self._regions.allocateOwned(nbytes)
        return 0 if offset is None else self._address + offset

    def ownedAt(self, buffer):
        """The offset of the region of a numpy array that ``buffer``
        starts, if it is one and is not lent; else None."""
        if self._address is None:
            return None
        offset = self._allocator.addressOf(buffer) - self._address
        return offset if self._regions.lendable(offset) else None

    def lend(self, offset):
        """Lend the region of a numpy array as it lies (see ``ownedAt``)."""
        self._regions.lendOwned(offset)

    def ownerHolds(self, offset):
        """True while numpy holds the array region at ``offset``."""
        return self._regions.ownerHolds(offset)

    def copyInto(self, offset, target):
        """Copy the data at ``offset`` into ``target``, a region's view."""
        target[:] = self._segment.buffer[offset:offset + len(target)]

    def close(self):
        """Unmap the arena, unless numpy arrays still live in it; returns
        whether it was unmapped."""
        if self._regions is not None and self._regions.owned():
            return False
        if self._address is not None:
            self._allocator.removeArea(self._address)
            self._address = None
        self._regions = None
        self._segment.close()
        return True
