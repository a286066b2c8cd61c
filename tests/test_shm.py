"""
Tests of ``asynqueue.shm``: segments, sweeping those of dead creators, and
SharedArray across real child processes. Every test checks that it leaves
no ``/dev/shm/aq-*`` entry and child processes check that the resource
tracker never hears of ours.
"""
import gc
import os
import pickle
import subprocess
import sys

import _posixshmem
import numpy as np
import pytest

from asynqueue import shm
from asynqueue.shm import Segment, SharedArray

from shmcase import noLeftovers, ourEntries, runChild  # noqa: F401


def mapped(name):
    """Whether segment ``name`` is mapped in this process (Linux)."""
    with open("/proc/self/maps") as maps:
        return any(name[1:] in line for line in maps)


needsProcMaps = pytest.mark.skipif(
    not os.path.exists("/proc/self/maps"), reason="needs /proc/self/maps")


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
            from asynqueue.arena import ReplyArena, ReplyArenaWriter
            from asynqueue.shm import Segment
            segment = Segment.create(100)
            Segment.attach(segment.name).close()
            replies = ReplyArena.create(256)
            ReplyArenaWriter.attach(replies.name).close()
            replies.close()
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
