"""
Tests of ``asynqueue.shm``: segments, the call arena and its reader, the
reply arena (with a fuzz test against a model), borrowing in place, and
SharedArray across real child processes. Every test checks that it leaves
no ``/dev/shm/aq-*`` entry and child processes check that the resource
tracker never hears of ours.
"""
import gc
import os
import pickle
import subprocess
import sys
import textwrap
import threading

import _posixshmem
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from asynqueue import shm
from asynqueue._speedups import framing
from asynqueue.shm import (
    ArenaReader, CallArena, ReplyArena, ReplyArenaWriter, Segment,
    SharedArray)

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
            from asynqueue.shm import Segment, ReplyArena, ReplyArenaWriter
            segment = Segment.create(100)
            Segment.attach(segment.name).close()
            ring = ReplyArena.create(256)
            ReplyArenaWriter.attach(ring.name).close()
            ring.close()
            segment.unlink()
            segment.close()
            print('numpy' in sys.modules)
        """)
        assert out == b"False\n"


class TestSweepOrphans:

    def test_names_say_who_made_them(self):
        segment = Segment.create(64)
        try:
            prefix, namespace, pid, token = segment.name.split("-")
            assert prefix == "/aq" and int(pid, 36) == os.getpid()
            assert namespace == shm._NAMESPACE and len(token) == 8
        finally:
            segment.unlink()
            segment.close()

    def test_dead_creators_segments_are_swept(self):
        out = runChild("""
            import os
            from asynqueue.shm import Segment, SharedArray
            kept = Segment.create(64), SharedArray(10)
            print(kept[0].name, kept[1].segment.name, flush=True)
            os._exit(0)
        """)
        names = out.decode().split()
        assert len(names) == 2 and all(n[1:] in ourEntries() for n in names)
        assert sorted(set(shm.sweepOrphans()) & set(names)) == sorted(names)
        assert not any(n[1:] in ourEntries() for n in names)

    def test_live_and_foreign_segments_stay(self):
        ours = Segment.create(64)
        dead = subprocess.run([sys.executable, "-c", "import os; "
                               "print(os.getpid())"], capture_output=True)
        deadPID = shm._base36(int(dead.stdout))
        foreign = ["/aq-{}-{}-0badf00d".format(namespace, deadPID)
                   for namespace in (shm._NAMESPACE + "x", "")]
        for name in foreign:
            os.close(_posixshmem.shm_open(name, os.O_CREAT | os.O_RDWR, 0o600))
        try:
            shm.sweepOrphans()
            assert ours.name[1:] in ourEntries()
            assert all(name[1:] in ourEntries() for name in foreign)
        finally:
            for name in foreign:
                _posixshmem.shm_unlink(name)
            ours.unlink()
            ours.close()


# ---------------------------------------------------------------------------
# Lent regions: CallArena, ArenaReader, the reply arena and borrow
# ---------------------------------------------------------------------------

H = shm.REGION_HEADER


@pytest.fixture
def arena():
    arena = CallArena()
    yield arena
    arena.close()


def giveBack(area, offset):
    """What a borrower does when done with the region at ``offset``."""
    area[offset - H] = 1


class TestCallArena:

    def test_aligned_first_fit_and_reuse(self, arena):
        regions = [arena.allocate(n) for n in (1, 64, 65, 1000)]
        assert [(s, o) for s, o, _ in regions] == [
            (0, H), (0, 2 * H + 64), (0, 3 * H + 128), (0, 4 * H + 256)]
        assert [len(v) for _, _, v in regions] == [1, 64, 65, 1000]
        assert arena.lentCount == 4
        arena.release(0, 2 * H + 64)
        assert arena.allocate(10)[:2] == (0, 2 * H + 64)
        arena.release(0, 3 * H + 128)
        assert arena.allocate(200)[:2] == (0, 5 * H + 1280)
        assert arena.allocate(128)[:2] == (0, 3 * H + 128)
        assert arena.segmentCount == 1

    def test_given_back_regions_are_taken_back(self, arena):
        segment, offset, view = arena.allocate(1000)
        reader = ArenaReader()
        try:
            name = arena.segmentName(segment)
            borrowed = np.frombuffer(reader.borrow(name, offset, 1000),
                                     np.uint8)
            assert arena.allocate(10)[1] > offset      # still lent
            assert arena.lentCount == 2
            del borrowed
            gc.collect()
            assert arena.lentCount == 1                 # given back
            assert arena.allocate(10)[:2] == (0, offset)
        finally:
            reader.close()

    def test_release_borrower(self, arena):
        first, second = object(), object()
        regions = [arena.allocate(100, borrower) for borrower in
                   (first, second, first, second)]
        arena.releaseBorrower(first)
        assert arena.lentCount == 2
        assert arena.allocate(100)[:2] == regions[0][:2]
        arena.releaseBorrower(second)
        arena.releaseBorrower(second)
        assert arena.lentCount == 1

    def test_growth(self, arena):
        assert arena.segmentCount == 0
        first = arena.allocate(700000)
        second = arena.allocate(700000)
        assert (first[0], second[0]) == (0, 1)
        huge = arena.allocate(5 << 20)
        assert huge[:2] == (2, H)
        sizes = [Segment.attach(arena.segmentName(n)) for n in range(3)]
        assert [s.size for s in sizes] == [1 << 20, 2 << 20, 6 << 20]
        for segment in sizes:
            segment.close()
        arena.release(1, H)
        assert arena.allocate(1 << 20)[:2] == (1, H)
        bigger = arena.allocate(7 << 20)
        assert bigger[0] == 3
        attached = Segment.attach(arena.segmentName(3))
        assert attached.size == 12 << 20
        attached.close()

    def test_initial_size(self):
        arena = CallArena(initialSize=5000)
        try:
            arena.allocate(100)
            segment = Segment.attach(arena.segmentName(0))
            assert segment.size == 5056
            segment.close()
            assert arena.allocate(5000)[:2] == (1, H)
        finally:
            arena.close()

    def test_bad_release(self, arena):
        arena.allocate(10)
        for segment, offset in ((0, 0), (0, 2 * H), (1, H), (-1, H)):
            with pytest.raises(ValueError, match="no region"):
                arena.release(segment, offset)
        with pytest.raises(ValueError, match="positive"):
            arena.allocate(0)

    def test_close(self, arena):
        segment, offset, view = arena.allocate(100)
        name = arena.segmentName(0)
        arena.close()
        arena.close()
        assert name[1:] not in ourEntries()
        view[0] = 1     # still mapped while the view lives
        arena.release(segment, offset)
        arena.releaseBorrower(None)
        with pytest.raises(RuntimeError, match="closed"):
            arena.allocate(1)

    def test_reader_borrows_in_place(self, arena):
        reader = ArenaReader()
        try:
            segment, offset, view = arena.allocate(5)
            view[:] = b"hello"
            name = arena.segmentName(segment)
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
        assert arena.lentCount == 0

    def test_with_frames(self, arena):
        """A call travels: FrameWriter → arena → child's reader → loads;
        the regions come back once the arrays are gone."""
        arrays = [np.arange(100000.0), np.ones((300, 300), np.int16, "F")]
        writer = framing.FrameWriter(allocate=arena.allocate,
                                     release=arena.release)
        placed = writer.write(1, 7, arrays)
        assert len(placed) == 2 and arena.lentCount == 2
        frames = framing.FrameReader()
        frames.feed(writer.take())
        frame = frames.next()
        reader = ArenaReader()
        try:
            back = pickle.loads(frame.payload, buffers=[
                reader.borrow(arena.segmentName(s), o, n)
                for s, o, n in frame.buffers])
            assert all(np.array_equal(a, b) for a, b in zip(arrays, back))
            assert back[1].flags.f_contiguous and back[0].flags.writeable
            keep = back[1][2:5]
            del back
            gc.collect()
            assert arena.lentCount == 1
            del keep
            gc.collect()
            assert arena.lentCount == 0
        finally:
            reader.close()


class TestBorrow:

    def test_given_back_when_the_last_array_goes(self):
        area = memoryview(bytearray(4 * H))
        area[H:H + 8] = b"abcdefgh"
        borrowed = shm.borrow(area, H, 8)
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

    def test_given_back_from_another_thread(self):
        area = memoryview(bytearray(2 * H))
        holder = [shm.borrow(area, H, 16)]
        thread = threading.Thread(target=holder.clear)
        thread.start()
        thread.join()
        assert area[0] == 1

    def test_a_copy_without_numpy(self):
        """Where numpy is not installed, the borrower gets a private copy,
        and the region is given back at once."""
        out = runChild("""
            sys.modules["numpy"] = None
            from asynqueue import shm
            area = memoryview(bytearray(256))
            area[64:69] = b"hello"
            copy = shm.borrow(area, 64, 5)
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
            size = shm.regionSize(operation)
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
