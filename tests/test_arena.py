"""
Tests of ``asynqueue.arena``: the call arena and its reader, the reply
arena (with a fuzz test against a model) and borrowing regions in place,
given back when the last array made from them is gone.
"""
import gc
import mmap
import os
import pickle
import threading

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from asynqueue import arena
from asynqueue._speedups import framing
from asynqueue.arena import (
    ArenaReader, CallArena, ReplyArena, ReplyArenaWriter)
from asynqueue.shm import Segment

from shmcase import noLeftovers, ourEntries, runChild  # noqa: F401

H = arena.REGION_HEADER


@pytest.fixture
def calls():
    calls = CallArena()
    yield calls
    calls.close()


def giveBack(area, offset):
    """What a borrower does when done with the region at ``offset``."""
    area[offset - H] = 1


class TestCallArena:

    def test_aligned_first_fit_and_reuse(self, calls):
        regions = [calls.allocate(n) for n in (1, 64, 65, 1000)]
        assert [(s, o) for s, o, _ in regions] == [
            (0, H), (0, 2 * H + 64), (0, 3 * H + 128), (0, 4 * H + 256)]
        assert [len(v) for _, _, v in regions] == [1, 64, 65, 1000]
        assert calls.lentCount == 4
        calls.release(0, 2 * H + 64)
        assert calls.allocate(10)[:2] == (0, 2 * H + 64)
        calls.release(0, 3 * H + 128)
        assert calls.allocate(200)[:2] == (0, 5 * H + 1280)
        assert calls.allocate(128)[:2] == (0, 3 * H + 128)
        assert calls.segmentCount == 1

    def test_given_back_regions_are_taken_back(self, calls):
        segment, offset, view = calls.allocate(1000)
        reader = ArenaReader()
        try:
            name = calls.segmentName(segment)
            borrowed = np.frombuffer(reader.borrow(name, offset, 1000),
                                     np.uint8)
            assert calls.allocate(10)[1] > offset      # still lent
            assert calls.lentCount == 2
            del borrowed
            gc.collect()
            assert calls.lentCount == 1                 # given back
            assert calls.allocate(10)[:2] == (0, offset)
        finally:
            reader.close()

    def test_release_borrower(self, calls):
        first, second = object(), object()
        regions = [calls.allocate(100, borrower) for borrower in
                   (first, second, first, second)]
        calls.releaseBorrower(first)
        assert calls.lentCount == 2
        assert calls.allocate(100)[:2] == regions[0][:2]
        calls.releaseBorrower(second)
        calls.releaseBorrower(second)
        assert calls.lentCount == 1

    def test_growth(self, calls):
        assert calls.segmentCount == 0
        first = calls.allocate(700000)
        second = calls.allocate(700000)
        assert (first[0], second[0]) == (0, 1)
        huge = calls.allocate(5 << 20)
        assert huge[:2] == (2, H)
        sizes = [Segment.attach(calls.segmentName(n)) for n in range(3)]
        assert [s.size for s in sizes] == [1 << 20, 2 << 20, 6 << 20]
        for segment in sizes:
            segment.close()
        calls.release(1, H)
        assert calls.allocate(1 << 20)[:2] == (1, H)
        bigger = calls.allocate(7 << 20)
        assert bigger[0] == 3
        attached = Segment.attach(calls.segmentName(3))
        assert attached.size == 12 << 20
        attached.close()

    def test_initial_size(self):
        calls = CallArena(initialSize=5000)
        try:
            calls.allocate(100)
            segment = Segment.attach(calls.segmentName(0))
            assert segment.size == 5056
            segment.close()
            assert calls.allocate(5000)[:2] == (1, H)
        finally:
            calls.close()

    def test_bad_release(self, calls):
        calls.allocate(10)
        for segment, offset in ((0, 0), (0, 2 * H), (1, H), (-1, H)):
            with pytest.raises(ValueError, match="no region"):
                calls.release(segment, offset)
        with pytest.raises(ValueError, match="positive"):
            calls.allocate(0)

    def test_close(self, calls):
        segment, offset, view = calls.allocate(100)
        name = calls.segmentName(0)
        calls.close()
        calls.close()
        assert name[1:] not in ourEntries()
        view[0] = 1     # still mapped while the view lives
        calls.release(segment, offset)
        calls.releaseBorrower(None)
        with pytest.raises(RuntimeError, match="closed"):
            calls.allocate(1)

    def test_reader_borrows_in_place(self, calls):
        reader = ArenaReader()
        try:
            segment, offset, view = calls.allocate(5)
            view[:] = b"hello"
            name = calls.segmentName(segment)
            borrowed = reader.borrow(name, offset, 5)
            assert bytes(borrowed) == b"hello"
            borrowed[0] = ord("j")
            assert bytes(view) == b"jello"
            for bad in ((1 << 20) - 2, 3), (H - 1, 1), (H, -1):
                with pytest.raises(ValueError, match="outside"):
                    reader.borrow(name, *bad)
            del borrowed
        finally:
            reader.close()
        assert calls.lentCount == 0

    def test_with_frames(self, calls):
        """A call travels: FrameWriter → arena → child's reader → loads;
        the regions come back once the arrays are gone."""
        arrays = [np.arange(100000.0), np.ones((300, 300), np.int16, "F")]
        writer = framing.FrameWriter(allocate=calls.allocate,
                                     release=calls.release)
        placed = writer.write(1, 7, arrays)
        assert len(placed) == 2 and calls.lentCount == 2
        frames = framing.FrameReader()
        frames.feed(writer.take())
        frame = frames.next()
        reader = ArenaReader()
        try:
            back = pickle.loads(frame.payload, buffers=[
                reader.borrow(calls.segmentName(s), o, n)
                for s, o, n in frame.buffers])
            assert all(np.array_equal(a, b) for a, b in zip(arrays, back))
            assert back[1].flags.f_contiguous and back[0].flags.writeable
            keep = back[1][2:5]
            del back
            gc.collect()
            assert calls.lentCount == 1
            del keep
            gc.collect()
            assert calls.lentCount == 0
        finally:
            reader.close()


class TestBorrow:

    def test_given_back_when_the_last_array_goes(self):
        area = memoryview(bytearray(4 * H))
        area[arena.OWNER_DONE] = 1      # a region lent, not owned
        area[H:H + 8] = b"abcdefgh"
        borrowed = arena.borrow(area, H, 8)
        assert isinstance(borrowed, memoryview) and not borrowed.readonly
        array = np.frombuffer(borrowed, np.uint8)[2:]
        del borrowed
        gc.collect()
        assert area[0] == 0
        array[0] = ord("C")
        assert bytes(area[H:H + 8]) == b"abCdefgh"
        del array
        gc.collect()
        assert area[0] == 1

    def test_owned_region_still_held_is_copied(self):
        """A region whose lender's numpy still holds its array (the call
        kept it) is copied and given back at once: the borrower's array
        is private."""
        area = memoryview(bytearray(2 * H))
        area[H:H + 4] = b"kept"
        borrowed = arena.borrow(area, H, 4)
        assert area[arena.GIVEN_BACK] == 1
        area[H:H + 4] = b"gone"
        assert bytes(borrowed) == b"kept"

    def test_given_back_from_another_thread(self):
        area = memoryview(bytearray(2 * H))
        area[arena.OWNER_DONE] = 1
        holder = [arena.borrow(area, H, 16)]
        assert area[0] == 0
        thread = threading.Thread(target=holder.clear)
        thread.start()
        thread.join()
        assert area[0] == 1

    def test_a_copy_without_numpy(self):
        """Where numpy is not installed, the borrower gets a private copy,
        and the region is given back at once."""
        out = runChild("""
            sys.modules["numpy"] = None
            from asynqueue import arena
            area = memoryview(bytearray(256))
            area[64:69] = b"hello"
            copy = arena.borrow(area, 64, 5)
            copy[0] = ord("j")
            print(type(copy).__name__, bytes(copy), bytes(area[64:69]),
                  area[0])
        """)
        assert out == b"bytearray b'jello' b'hello' 1\n"


# ---------------------------------------------------------------------------
# The reply arena
# ---------------------------------------------------------------------------

@pytest.fixture
def replies():
    parent = ReplyArena.create(1024)
    child = ReplyArenaWriter.attach(parent.name)
    yield parent, child
    child.close()
    parent.close()


class TestReplyArena:

    def test_sizes(self, replies):
        parent, child = replies
        assert parent.size == child.size == 1024
        assert child.name == parent.name
        odd = ReplyArena.create(100)
        assert odd.size == 128
        odd.close()
        odd.close()

    def test_lent_until_given_back(self, replies):
        parent, child = replies
        regions = [child.allocate(n) for n in (64, 300, 100)]
        assert [r[:2] for r in regions] == [(0, 64), (0, 192), (0, 576)]
        assert child.allocate(257) is None      # 704..1024 is free
        regions[1][2][:] = b"a" * 300
        first = np.frombuffer(parent.borrow(3 * H, 300), np.uint8)
        assert bytes(first) == b"a" * 300
        others = [parent.borrow(64, 64), parent.borrow(576, 100)]
        del others
        gc.collect()
        assert child.allocate(64)[:2] == (0, 64)
        assert child.allocate(101)[:2] == (0, 576)
        first[0] = 0        # the parent's, until it lets go
        assert bytes(regions[1][2][:2]) == b"\0a"
        del first
        gc.collect()
        assert child.allocate(300)[:2] == (0, 192)

    def test_never_fits(self, replies):
        parent, child = replies
        assert child.allocate(1024 - H + 1) is None
        assert child.allocate(1024 - H)[:2] == (0, H)

    def test_release_takes_back_unsent_regions(self, replies):
        parent, child = replies
        child.allocate(10)
        second = child.allocate(100)
        child.release(0, second[1])
        with pytest.raises(ValueError, match="no region"):
            child.release(0, second[1])
        with pytest.raises(ValueError, match="no region"):
            child.release(1, H)
        assert child.allocate(100)[:2] == second[:2]

    def test_frame_writer_failure_rolls_back(self, replies):
        parent, child = replies
        writer = framing.FrameWriter(10, child.allocate, child.release)
        with pytest.raises((pickle.PicklingError, AttributeError)):
            writer.write(1, 0, [np.ones(10), np.ones(5), lambda: 0])
        assert writer.write(1, 0, np.ones(10)) == [(0, H, 80)]

    def test_bad_borrow(self, replies):
        parent, child = replies
        for offset, length in (0, 1), (1000, 100), (H, -1):
            with pytest.raises(ValueError, match="outside"):
                parent.borrow(offset, length)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40).map(lambda n: n * 64),
       st.lists(st.one_of(st.integers(1, 3000), st.integers(-80, -1)),
                max_size=80),
       st.randoms(use_true_random=False))
def test_reply_arena_fuzz(capacity, operations, rng):
    """Random allocations (positive sizes) and drops of a borrowed buffer
    (negative: which one): the data written is the data read, no region
    overlaps a borrowed one, and the child refuses only when no free
    stretch is long enough."""
    parent = ReplyArena.create(capacity)
    child = ReplyArenaWriter.attach(parent.name)
    borrowed = []           # (offset, size, data, array)
    try:
        for operation in operations:
            if operation < 0:
                if borrowed:
                    dropped = borrowed.pop(operation % len(borrowed))
                    assert bytes(dropped[3]) == dropped[2]
                    del dropped
                continue
            size = arena.regionSize(operation)
            used = sorted((o - H, o - H + s) for o, s, _, _ in borrowed)
            gaps = [b - a for a, b in zip(
                [0] + [end for _, end in used],
                [start for start, _ in used] + [capacity])]
            region = child.allocate(operation)
            assert (region is not None) == (max(gaps) >= size)
            if region is None:
                continue
            _, offset, view = region
            assert offset % 64 == 0 and offset - H + size <= capacity
            for start, end in used:
                assert offset - H + size <= start or end <= offset - H, \
                    "overlaps a borrowed region"
            data = rng.randbytes(operation)
            view[:] = data
            borrowed.append((offset, size, data, np.frombuffer(
                parent.borrow(offset, operation), np.uint8)))
        assert all(bytes(array) == data for _, _, data, array in borrowed)
    finally:
        borrowed.clear()
        child.close()
        parent.close()


def test_a_forked_copy_does_not_give_back():
    """A fork of the borrower that drops its copy of an array leaves the
    region lent: the borrower itself still has it."""
    area = memoryview(mmap.mmap(-1, 2 * H))     # shared with the fork
    area[arena.OWNER_DONE] = 1
    borrowed = np.frombuffer(arena.borrow(area, H, 16), np.uint8)
    pid = os.fork()
    if pid == 0:
        del borrowed
        gc.collect()
        os._exit(0)
    os.waitpid(pid, 0)
    assert area[0] == 0
    del borrowed
    gc.collect()
    assert area[0] == 1
