"""
Tests of ``asynqueue.shm``: segments, the call arena and its reader, the
reply ring (with a fuzz test against a model), and SharedArray across real
child processes. Every test checks that it leaves no ``/dev/shm/aq-*`` entry
and child processes check that the resource tracker never hears of ours.
"""
import gc
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from asynqueue import shm
from asynqueue._speedups import framing
from asynqueue.shm import (
    ArenaReader, CallArena, ReplyRing, ReplyRingWriter, Segment, SharedArray)

SHM_DIRECTORY = "/dev/shm"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ourEntries():
    """Our entries in /dev/shm (empty where there is no such directory)."""
    if not os.path.isdir(SHM_DIRECTORY):
        return set()
    return {name for name in os.listdir(SHM_DIRECTORY)
            if name.startswith("aq-")}


@pytest.fixture(autouse=True)
def noLeftovers():
    """Each test must unlink every segment it creates."""
    before = ourEntries()
    yield
    gc.collect()
    assert ourEntries() - before == set()


def mapped(name):
    """Whether segment ``name`` is mapped in this process (Linux)."""
    with open("/proc/self/maps") as maps:
        return any(name[1:] in line for line in maps)


needsProcMaps = pytest.mark.skipif(
    not os.path.exists("/proc/self/maps"), reason="needs /proc/self/maps")


def runChild(code, stdin=b""):
    """Run ``code`` in a fresh interpreter with every warning an error;
    returns its stdout after checking it succeeded silently on stderr."""
    prologue = ("import sys, pickle\n"
                "from multiprocessing import resource_tracker\n")
    epilogue = ("\nassert resource_tracker._resource_tracker._fd is None, "
                "'the resource tracker was started'\n")
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c",
         prologue + textwrap.dedent(code) + epilogue],
        input=stdin, capture_output=True, cwd=ROOT, timeout=60,
        env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.stderr == b"" and result.returncode == 0, \
        result.stderr.decode()
    return result.stdout


# ---------------------------------------------------------------------------
# Segment
# ---------------------------------------------------------------------------

class TestSegment:

    def test_create_attach_share_memory(self):
        owner = Segment.create(1000)
        try:
            assert owner.name.startswith("/aq-") and len(owner.name) <= 30
            assert owner.owned and owner.size == 1000
            assert owner.name[1:] in ourEntries()
            assert bytes(owner.buffer[:4]) == bytes(4)
            other = Segment.attach(owner.name)
            assert not other.owned and other.size >= 1000
            other.buffer[10:13] = b"abc"
            assert bytes(owner.buffer[10:13]) == b"abc"
            other.close()
        finally:
            owner.unlink()
            owner.close()
        assert owner.name[1:] not in ourEntries()

    def test_names_differ(self):
        segments = [Segment.create(1) for _ in range(20)]
        assert len({s.name for s in segments}) == 20
        for segment in segments:
            segment.unlink()
            segment.close()

    def test_close_and_unlink_twice(self):
        segment = Segment.create(64)
        segment.close()
        segment.close()
        assert segment.closed and segment.buffer is None
        segment.unlink()
        segment.unlink()
        assert "closed" in repr(segment)

    def test_only_the_owner_unlinks(self):
        owner = Segment.create(64)
        other = Segment.attach(owner.name)
        with pytest.raises(ValueError, match="only the process"):
            other.unlink()
        other.close()
        owner.unlink()
        owner.close()

    @needsProcMaps
    def test_close_waits_for_live_views(self):
        segment = Segment.create(4096)
        view = segment.buffer[100:200]
        array = np.frombuffer(segment.buffer, np.uint8)
        segment.unlink()
        segment.close()
        view[0] = 7
        assert array[100] == 7 and mapped(segment.name)
        del view
        assert mapped(segment.name)
        del array
        gc.collect()
        assert not mapped(segment.name)

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="size"):
            Segment.create(0)
        with pytest.raises(FileNotFoundError, match="aq-missing"):
            Segment.attach("/aq-missing")

    def test_forgotten_segment_is_unlinked(self):
        name = Segment.create(64).name
        gc.collect()
        assert name[1:] not in ourEntries()

    def test_no_resource_tracker_and_no_numpy(self):
        out = runChild("""
            from asynqueue.shm import Segment, ReplyRing, ReplyRingWriter
            segment = Segment.create(100)
            Segment.attach(segment.name).close()
            ring = ReplyRing.create(256)
            ReplyRingWriter.attach(ring.name).close()
            ring.close()
            segment.unlink()
            segment.close()
            print('numpy' in sys.modules)
        """)
        assert out == b"False\n"


# ---------------------------------------------------------------------------
# CallArena and ArenaReader
# ---------------------------------------------------------------------------

@pytest.fixture
def arena():
    arena = CallArena()
    yield arena
    arena.close()


class TestCallArena:

    def test_aligned_first_fit_and_reuse(self, arena):
        regions = [arena.allocate(n) for n in (1, 64, 65, 1000)]
        assert [(s, o) for s, o, _ in regions] == [
            (0, 0), (0, 64), (0, 128), (0, 256)]
        assert [len(v) for _, _, v in regions] == [1, 64, 65, 1000]
        arena.release(0, 64)
        assert arena.allocate(10)[:2] == (0, 64)
        arena.release(0, 128)
        assert arena.allocate(200)[:2] == (0, 1280)
        assert arena.allocate(128)[:2] == (0, 128)
        assert arena.segmentCount == 1

    def test_growth(self, arena):
        assert arena.segmentCount == 0
        first = arena.allocate(700000)
        second = arena.allocate(700000)
        assert (first[0], second[0]) == (0, 1)
        huge = arena.allocate(5 << 20)
        assert huge[:2] == (2, 0)
        sizes = [Segment.attach(arena.segmentName(n)) for n in range(3)]
        assert [s.size for s in sizes] == [1 << 20, 2 << 20, 5 << 20]
        for segment in sizes:
            segment.close()
        arena.release(1, 0)
        assert arena.allocate(1 << 20)[:2] == (1, 0)
        bigger = arena.allocate(6 << 20)
        assert bigger[0] == 3
        attached = Segment.attach(arena.segmentName(3))
        assert attached.size == 10 << 20
        attached.close()

    def test_initial_size(self):
        arena = CallArena(initialSize=5000)
        try:
            arena.allocate(100)
            segment = Segment.attach(arena.segmentName(0))
            assert segment.size == 5056
            segment.close()
            assert arena.allocate(5000)[:2] == (1, 0)
        finally:
            arena.close()

    def test_bad_release(self, arena):
        arena.allocate(10)
        for segment, offset in ((0, 64), (1, 0), (-1, 0)):
            with pytest.raises(ValueError, match="no region"):
                arena.release(segment, offset)

    def test_close(self, arena):
        segment, offset, view = arena.allocate(100)
        name = arena.segmentName(0)
        arena.close()
        arena.close()
        assert name[1:] not in ourEntries()
        view[0] = 1     # still mapped while the view lives
        arena.release(segment, offset)
        with pytest.raises(RuntimeError, match="closed"):
            arena.allocate(1)

    def test_reader_sees_the_arena(self, arena):
        reader = ArenaReader()
        try:
            segment, offset, view = arena.allocate(5)
            view[:] = b"hello"
            name = arena.segmentName(segment)
            assert bytes(reader.view(name, offset, 5)) == b"hello"
            reader.view(name, 0, 1)[0] = ord("j")
            assert bytes(view) == b"jello"
            with pytest.raises(ValueError, match="outside"):
                reader.view(name, (1 << 20) - 2, 3)
        finally:
            reader.close()
        assert bytes(reader.view(name, offset, 5)) == b"jello"
        reader.close()

    def test_with_frames(self, arena):
        """A call travels: FrameWriter → arena → child's reader → loads."""
        arrays = [np.arange(100000.0), np.ones((300, 300), np.int16, "F")]
        writer = framing.FrameWriter(allocate=arena.allocate,
                                     release=arena.release)
        placed = writer.write(1, 7, arrays)
        assert len(placed) == 2
        frames = framing.FrameReader()
        frames.feed(writer.take())
        frame = frames.next()
        reader = ArenaReader()
        try:
            buffers = [framing.copyOut(reader.view(
                arena.segmentName(s), o, n)) for s, o, n in frame.buffers]
        finally:
            reader.close()
        for segment, offset, _ in frame.buffers:
            arena.release(segment, offset)
        back = pickle.loads(frame.payload, buffers=buffers)
        assert all(np.array_equal(a, b) for a, b in zip(arrays, back))
        assert back[1].flags.f_contiguous and back[0].flags.writeable


# ---------------------------------------------------------------------------
# The reply ring
# ---------------------------------------------------------------------------

@pytest.fixture
def ring():
    ring = ReplyRing.create(256)
    writer = ReplyRingWriter.attach(ring.name)
    yield ring, writer
    writer.close()
    ring.close()


class TestReplyRing:

    def test_sizes(self, ring):
        parent, child = ring
        assert parent.size == child.size == 256
        assert child.name == parent.name
        odd = ReplyRing.create(100)
        assert odd.size == 128
        odd.close()
        odd.close()

    def test_wrap_around(self, ring):
        parent, child = ring
        regions = [child.allocate(n) for n in (64, 64, 100)]
        assert [r[:2] for r in regions] == [(0, 0), (0, 64), (0, 128)]
        assert child.allocate(1) is None            # full
        regions[0][2][:] = b"a" * 64
        assert bytes(parent.view(0, 64)) == b"a" * 64
        parent.consume(0, 64)
        parent.consume(64, 64)
        assert child.allocate(192) is None          # 128 bytes are free
        assert child.allocate(64)[:2] == (0, 0)     # wraps to the start
        parent.consume(128, 100)
        assert child.allocate(128)[:2] == (0, 64)
        assert child.allocate(65) is None           # tail too short, 0 in use
        parent.consume(0, 64)
        assert child.allocate(65) is None           # 0..128 overlaps 64..192
        parent.consume(64, 128)
        _, offset, view = child.allocate(65)        # skips 64 at the tail
        assert offset == 0 and len(view) == 65
        parent.consume(0, 65)
        assert child.allocate(256) is None          # the tail is skipped
        assert child.allocate(128)[:2] == (0, 128)

    def test_never_fits(self, ring):
        parent, child = ring
        assert child.allocate(257) is None
        assert child.allocate(256)[:2] == (0, 0)

    def test_consume_in_order_only(self, ring):
        parent, child = ring
        child.allocate(10)
        child.allocate(10)
        with pytest.raises(ValueError, match="next unconsumed one, which is "
                                             "at offset 0"):
            parent.consume(64, 10)
        parent.consume(0, 10)
        parent.consume(64, 10)
        with pytest.raises(ValueError, match="never written"):
            parent.consume(128, 10)
        with pytest.raises(ValueError, match="outside"):
            parent.view(200, 100)

    def test_release_rolls_back_the_latest(self, ring):
        parent, child = ring
        child.allocate(10)
        second = child.allocate(100)
        third = child.allocate(64)
        with pytest.raises(ValueError, match="latest"):
            child.release(0, second[1])
        child.release(0, third[1])
        child.release(0, second[1])
        assert child.allocate(150)[:2] == (0, 64)
        parent.consume(0, 10)
        parent.consume(64, 150)

    def test_frame_writer_failure_rolls_back(self, ring):
        parent, child = ring
        writer = framing.FrameWriter(10, child.allocate, child.release)
        with pytest.raises((pickle.PicklingError, AttributeError)):
            writer.write(1, 0, [np.ones(10), np.ones(5), lambda: 0])
        assert writer.write(1, 0, np.ones(10)) == [(0, 0, 80)]
        parent.consume(0, 80)

    @pytest.mark.parametrize("size", [1, 64, 1000])
    def test_attach_refuses_other_segments(self, size):
        segment = Segment.create(size)
        with pytest.raises(ValueError, match="not a reply ring"):
            ReplyRingWriter.attach(segment.name)
        segment.unlink()
        segment.close()


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40).map(lambda n: n * 64),
       st.lists(st.one_of(st.integers(1, 3000), st.just(0)), max_size=80),
       st.randoms(use_true_random=False))
def test_ring_fuzz(capacity, operations, rng):
    """Random allocations (positive sizes) and consumptions (0): the data
    written is the data read, no region overlaps an unconsumed one, and the
    ring refuses exactly when a model says there is no room."""
    parent = ReplyRing.create(capacity)
    child = ReplyRingWriter.attach(parent.name)
    outstanding = []            # (linear start, linear end, offset, data)
    written = consumed = 0
    try:
        for operation in operations:
            if operation == 0:
                if outstanding:
                    start, end, offset, data = outstanding.pop(0)
                    assert bytes(parent.view(offset, len(data))) == data
                    parent.consume(offset, len(data))
                    consumed = end
                continue
            size = -(-operation // 64) * 64
            tail = capacity - written % capacity
            skip = tail if size > tail else 0
            fits = written + skip + size - consumed <= capacity
            region = child.allocate(operation)
            assert (region is not None) == (fits and size <= capacity)
            if region is None:
                continue
            _, offset, view = region
            start = written + skip
            assert offset == start % capacity and offset + size <= capacity
            for otherStart, otherEnd, otherOffset, _ in outstanding:
                assert (offset + size <= otherOffset or
                        otherOffset + otherEnd - otherStart <= offset), \
                    "overlaps unconsumed data"
            data = rng.randbytes(operation)
            view[:] = data
            written = start + size
            outstanding.append((start, written, offset, data))
        for start, end, offset, data in outstanding:
            assert bytes(parent.view(offset, len(data))) == data
    finally:
        child.close()
        parent.close()


# ---------------------------------------------------------------------------
# SharedArray
# ---------------------------------------------------------------------------

@pytest.fixture
def shared():
    array = SharedArray((6, 8), dtype=np.float64)
    yield array
    array.close()


class TestSharedArray:

    def test_zero_filled_and_owned(self, shared):
        assert isinstance(shared, SharedArray) and shared.owned
        assert shared.shape == (6, 8) and not shared.any()
        assert shared.segment.name[1:] in ourEntries()

    def test_from_array(self):
        source = np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4))
        with SharedArray.fromArray(source) as copy:
            assert np.array_equal(copy, source) and copy.dtype == np.int32
            copy[0, 0] = 99
            assert source[0, 0] == 0

    def test_bad_arguments(self):
        with pytest.raises(TypeError, match="Python objects"):
            SharedArray(3, dtype=object)
        with pytest.raises(ValueError, match="negative"):
            SharedArray((2, -1))

    def test_empty(self):
        with SharedArray(0) as empty:
            assert pickle.loads(pickle.dumps(empty)).shape == (0,)

    @pytest.mark.parametrize("select", [
        lambda a: a, lambda a: a[2:, 1::3], lambda a: a[::-1, ::-2],
        lambda a: a.T, lambda a: a[3], lambda a: a.reshape(4, 12)[1:3],
        lambda a: a[1, 2:3].view(np.uint8), lambda a: a[4:4]])
    def test_views_pickle_as_the_same_memory(self, shared, select):
        shared[...] = np.arange(48).reshape(6, 8)
        view = select(shared)
        assert type(view) is SharedArray and view.segment is shared.segment
        for protocol in (2, 5):
            back = pickle.loads(pickle.dumps(view, protocol))
            assert type(back) is SharedArray
            assert back.segment is shared.segment
            assert back.shape == view.shape and back.strides == view.strides
            assert np.array_equal(back, view)
            if back.size:
                assert np.shares_memory(back, shared)

    def test_private_results_are_plain(self, shared):
        for result in (shared + 1, np.sin(shared), shared.copy(),
                       shared.astype(np.int8), shared.T.ravel(),
                       shared[::2].flatten(), pickle.loads(pickle.dumps(
                           shared * 2)), shared.sum(axis=0)):
            assert type(result) is np.ndarray
            assert not np.shares_memory(result, shared)
        assert type(shared.sum()) is np.float64
        assert type(shared.ravel()) is SharedArray

    def test_in_place_stays_shared(self, shared):
        shared += 1
        np.multiply(shared, 3, out=shared)
        assert type(shared) is SharedArray and shared.segment is not None
        assert (shared == 3).all()

    def test_close(self):
        array = SharedArray(10)
        view = array[2:5]
        name = array.segment.name
        array.close()
        array.close()
        assert name[1:] not in ourEntries()
        view[:] = 1                 # memory lives while arrays use it
        assert array.sum() == 3
        with pytest.raises(ValueError, match="closed"):
            pickle.dumps(view)
        with pytest.raises(FileNotFoundError, match="freed"):
            shm._attachArray(name, 0, (1,), None, np.float64)

    @needsProcMaps
    def test_unmapped_once_unused(self):
        array = SharedArray(10)
        name = array.segment.name
        view = array[1:]
        array.close()
        del array
        assert mapped(name)
        del view
        gc.collect()
        assert not mapped(name)

    def test_close_all(self):
        arrays = [SharedArray(5) for _ in range(3)]
        names = {a.segment.name[1:] for a in arrays}
        assert names <= ourEntries()
        SharedArray.closeAll()
        assert not names & ourEntries()
        assert all(a.sum() == 0 for a in arrays)

    def test_child_writes_into_parent_memory(self, shared):
        view = shared[1:5, ::2]
        out = runChild("""
            import numpy as np
            from asynqueue import shm
            array = pickle.load(sys.stdin.buffer)
            again = pickle.loads(pickle.dumps(array))
            assert type(array).__name__ == 'SharedArray', type(array)
            assert not array.owned and again.segment is array.segment
            array[...] = np.arange(array.size).reshape(array.shape)
            array.close()       # not the owner: does nothing
            sys.stdout.buffer.write(pickle.dumps(array[::-1, 1]))
            name = array.segment.name
            del array, again
            import gc; gc.collect()
            assert name in shm._attached    # kept a while, for reuse
            shm._recentlyAttached.clear()
            gc.collect()
            assert name not in shm._attached
            with open('/proc/self/maps') as maps:
                assert name[1:] not in maps.read()
        """, stdin=pickle.dumps(view))
        assert np.array_equal(view, np.arange(16).reshape(4, 4))
        assert shared[0].sum() == 0 and shared[1, 1] == 0
        back = pickle.loads(out)
        assert back.segment is shared.segment and back.owned
        assert np.array_equal(back, [13, 9, 5, 1])

    def test_child_sees_parent_writes_without_tracker(self):
        with SharedArray.fromArray(np.arange(1000.0)) as array:
            out = runChild("""
                array = pickle.load(sys.stdin.buffer)
                print(float(array.sum()))
            """, stdin=pickle.dumps(array[100:]))
            assert float(out) == np.arange(100.0, 1000.0).sum()
