"""
Tests of what process workers carry: numpy arrays in and out (small,
large, larger than the reply arena, kept by either side, non-contiguous),
bytes, callables sent by value, things that cannot be pickled or imported,
and SharedArrays passed by reference.
"""
import sys
import threading
import types

import numpy
from twisted.internet import defer

from twisted.trial.unittest import SkipTest

from asynqueue import SharedArray, errors
from asynqueue._speedups import COMPILED

import procfuncs
from proccase import ProcessTestCase, shmExists

#: Bytes in a "large" array: well above the default shmThreshold (64 KiB).
LARGE = 4 << 20


class TestArrays(ProcessTestCase):

    @defer.inlineCallbacks
    def test_smallArrayInAndOut(self):
        q = self.makeQueue()
        array = numpy.arange(10.0)
        result = yield q.call(procfuncs.twice, array)
        self.assertEqual(result.tolist(), (array * 2).tolist())
        result[0] = 99.0  # The result is the caller's, writable.

    @defer.inlineCallbacks
    def test_argumentIsPrivateCopy(self):
        """The child changes its copy; the parent's array stays."""
        q = self.makeQueue()
        for size in (10, LARGE // 8):
            array = numpy.ones(size)
            total = yield q.call(procfuncs.mutateAndSum, array)
            self.assertEqual(total, float(size))
            self.assertTrue((array == 1).all())

    @defer.inlineCallbacks
    def test_largeArrayInAndOut(self):
        q = self.makeQueue()
        array = numpy.random.default_rng(1).random(LARGE // 8)
        for _ in range(3):
            result = yield q.call(procfuncs.twice, array)
            self.assertTrue(numpy.array_equal(result, array * 2))
            self.assertTrue(result.flags.writeable)
            result += 1.0
        self.assertGreater(self.workerOf(q).arena.segmentCount, 0)

    @defer.inlineCallbacks
    def test_resultsOutgrowReplyArena(self):
        """A result larger than the reply arena comes back all the same
        (through the pipe), and the arena grows for the next ones."""
        q = self.makeQueue()
        worker = self.workerOf(q)
        small = numpy.arange(LARGE // 32, dtype=numpy.float64)
        for _ in range(2):
            self.assertTrue(numpy.array_equal(
                (yield q.call(procfuncs.twice, small)), small * 2))
        first = worker.process.replyGeneration
        self.assertEqual(first, 1)
        big = numpy.arange(3 * LARGE, dtype=numpy.uint8)
        for _ in range(3):
            result = yield q.call(procfuncs.twice, big)
            self.assertTrue(numpy.array_equal(result, big * 2))
        self.assertGreater(worker.process.replyGeneration, first)
        self.assertEqual(len(worker.process.replyArenas), 1)

    @defer.inlineCallbacks
    def test_pipelinedLargeResults(self):
        """Many large results in flight at once share the reply arena."""
        q = self.makeQueue(2, pipelining=4)
        arrays = [numpy.full(LARGE // 8, float(k)) for k in range(12)]
        results = yield defer.gatherResults(
            [q.call(procfuncs.twice, a) for a in arrays])
        for k, result in enumerate(results):
            self.assertTrue((result == 2.0 * k).all())

    @defer.inlineCallbacks
    def test_keptResultsStayIntact(self):
        """Results are the caller's for as long as it keeps them: the
        child never writes where a kept result lies, and they outlive the
        queue (whose shared memory is unlinked all the same)."""
        q = self.makeQueue()
        kept = []
        for k in range(12):
            result = yield q.call(procfuncs.twice, numpy.full(LARGE // 8, k))
            if k % 3 == 0:
                kept.append((k, result[1:]))
            del result
        for k, view in kept:
            self.assertTrue((view == 2 * k).all())
        yield q.shutdown()
        self.assertNothingLeft()
        for k, view in kept:
            self.assertTrue((view == 2 * k).all())

    @defer.inlineCallbacks
    def test_argumentKeptByTheChild(self):
        """An argument the child keeps stays intact while later calls come
        through the arena; once the child lets go, its memory is reused."""
        q = self.makeQueue()
        arena = self.workerOf(q).arena
        yield q.call(procfuncs.setGlobal, "kept", numpy.full(LARGE // 8, 7.0))
        self.assertEqual(arena.lentCount, 1)
        for k in range(5):
            yield q.call(procfuncs.mutateAndSum, numpy.full(LARGE // 8, k))
        self.assertEqual(arena.lentCount, 1)
        kept = yield q.call(procfuncs.getGlobal, "kept")
        self.assertTrue((kept == 7.0).all())
        yield q.call(procfuncs.setGlobal, "kept", None)
        self.assertEqual(arena.lentCount, 0)
        segments = arena.segmentCount
        for k in range(5):
            yield q.call(procfuncs.mutateAndSum, numpy.full(LARGE // 8, k))
        self.assertEqual(arena.segmentCount, segments)

    @defer.inlineCallbacks
    def test_memoryReusedCallAfterCall(self):
        """A loop of large calls reuses the same shared memory: the arena
        and the reply arena stop growing, and nothing stays lent."""
        q = self.makeQueue()
        worker = self.workerOf(q)
        array = numpy.ones(LARGE // 8)
        for _ in range(5):      # as the loop below: one result kept
            result = yield q.call(procfuncs.twice, array)
        segments = worker.arena.segmentCount
        generation = worker.process.replyGeneration
        for _ in range(20):
            result = yield q.call(procfuncs.twice, array)
        self.assertTrue((result == 2.0).all())
        self.assertEqual(worker.arena.segmentCount, segments)
        self.assertEqual(worker.process.replyGeneration, generation)
        self.assertEqual(worker.arena.lentCount, 0)

    @defer.inlineCallbacks
    def test_deadChildsRegionsAreFreed(self):
        q = self.makeQueue()
        worker = self.workerOf(q)
        yield q.call(procfuncs.setGlobal, "kept", numpy.ones(LARGE // 8))
        self.assertEqual(worker.arena.lentCount, 1)
        old = worker.process
        old.kill()
        yield self.replaced(worker, old)
        self.assertEqual(worker.arena.lentCount, 0)

    @defer.inlineCallbacks
    def test_nonContiguousArrays(self):
        q = self.makeQueue()
        base = numpy.arange(400.0 * 400).reshape(400, 400)
        for array in (base[::3, 1::2], base.T, numpy.asfortranarray(base),
                      base[:, 5]):
            shape, writable, contiguous, values = yield q.call(
                procfuncs.describe, array)
            self.assertEqual(shape, array.shape)
            self.assertTrue(writable)
            self.assertEqual(values, array.tolist())
            self.assertTrue(numpy.array_equal(
                (yield q.call(procfuncs.twice, array)), array * 2))

    @defer.inlineCallbacks
    def test_bytes(self):
        q = self.makeQueue()
        for data in (b"", b"x" * 100, b"y" * LARGE, bytearray(LARGE)):
            self.assertEqual((yield q.call(procfuncs.sizeOf, data)),
                             (type(data).__name__, len(data)))
            self.assertEqual((yield q.call(procfuncs.echo, data)), data)


class TestPickling(ProcessTestCase):

    @defer.inlineCallbacks
    def test_unpicklableArgumentFailsThatCallOnly(self):
        q = self.makeQueue(pipelining=2)
        pid = self.workerOf(q).process.pid
        good = q.call(procfuncs.inc, 1)
        try:
            yield q.call(procfuncs.echo, threading.Lock())
        except errors.WorkerError as error:
            self.assertIn("Can't send", str(error))
            self.assertIn("lock", str(error))
        else:
            self.fail("a lock was sent")
        self.assertEqual((yield good), 2)
        self.assertEqual((yield q.call(procfuncs.inc, 2)), 3)
        self.assertEqual(self.workerOf(q).process.pid, pid)

    @defer.inlineCallbacks
    def test_unpicklableResult(self):
        q = self.makeQueue()
        pid = self.workerOf(q).process.pid
        try:
            yield q.call(procfuncs.makeLock)
        except errors.WorkerError as error:
            self.assertIn("pickling the result", str(error))
            self.assertIn("lock", str(error))
        else:
            self.fail("a lock came back")
        self.assertEqual((yield q.call(procfuncs.inc, 2)), 3)
        self.assertEqual(self.workerOf(q).process.pid, pid)

    @defer.inlineCallbacks
    def test_unimportableCallable(self):
        """A function of a module the child cannot import: a clear error."""
        module = types.ModuleType("aq_parent_only")
        exec("def f(x):\n    return x\n", module.__dict__)
        sys.modules[module.__name__] = module
        self.addCleanup(sys.modules.pop, module.__name__)
        q = self.makeQueue()
        try:
            yield q.call(module.f, 1)
        except errors.WorkerError as error:
            self.assertIn("aq_parent_only", str(error))
            self.assertIn("loading a call", str(error))
        else:
            self.fail("the child imported a module it cannot see")
        self.assertEqual((yield q.call(procfuncs.inc, 2)), 3)

    @defer.inlineCallbacks
    def test_callablesByValue(self):
        q = self.makeQueue()
        factor = 3

        def triple(x):
            return factor * x
        self.assertEqual((yield q.call(triple, 2)), 6)
        self.assertEqual((yield q.call(lambda: [factor] * 2)), [3, 3])
        array = numpy.arange(LARGE // 8.0)
        result = yield q.call(lambda a: a + factor, array)
        self.assertTrue(numpy.array_equal(result, array + 3))


class TestSharedArray(ProcessTestCase):

    @defer.inlineCallbacks
    def test_childWritesInPlace(self):
        q = self.makeQueue()
        with SharedArray((1000,), numpy.float64) as array:
            self.assertIsNone((yield q.call(procfuncs.fill, array, 7.0)))
            self.assertTrue((array == 7.0).all())
            name = array.segment.name
        self.assertFalse(shmExists(name))

    @defer.inlineCallbacks
    def test_fromArrayAndSlices(self):
        q = self.makeQueue(2)
        source = numpy.arange(100.0).reshape(10, 10)
        with SharedArray.fromArray(source) as array:
            self.assertTrue(numpy.array_equal(array, source))
            yield q.call(procfuncs.fill, array[2:4], -1.0)
            yield q.call(procfuncs.fill, array[:, 7], -2.0)
            expected = source.copy()
            expected[2:4] = -1.0
            expected[:, 7] = -2.0
            self.assertTrue(numpy.array_equal(array, expected))
            shape, writable, contiguous, values = yield q.call(
                procfuncs.describe, array[5:, ::2])
            self.assertEqual(values, expected[5:, ::2].tolist())
            self.assertTrue(writable)

    @defer.inlineCallbacks
    def test_largeSharedArrayNotCopied(self):
        """A SharedArray larger than the threshold still goes by
        reference: the call arena is never used."""
        q = self.makeQueue()
        with SharedArray((LARGE // 8,)) as array:
            yield q.call(procfuncs.fill, array, 1.5)
            self.assertTrue((array == 1.5).all())
        self.assertEqual(self.workerOf(q).arena.segmentCount, 0)

    @defer.inlineCallbacks
    def test_shutdownFreesWhatIsLeft(self):
        q = self.makeQueue()
        array = SharedArray((10,))
        yield q.call(procfuncs.fill, array, 2.0)
        name = array.segment.name
        self.assertTrue(shmExists(name))
        yield q.shutdown()
        self.assertFalse(shmExists(name))


class TestArraysBornInArena(ProcessTestCase):
    """
    On the compiled core, large arrays a call makes are born in the reply
    arena and a result goes back where it lies, with no copy; whatever the
    child does with its arrays, the caller's results stay private.
    """

    def warmUp(self, q):
        """A first large result: the child loads numpy and asks for the
        reply arena that later arrays are born in."""
        return q.call(procfuncs.twice, numpy.ones(LARGE // 8))

    @defer.inlineCallbacks
    def test_largeArraysBornInArena(self):
        q = self.makeQueue()
        yield self.warmUp(q)
        name = yield q.call(procfuncs.handlerName, LARGE)
        self.assertEqual(name, "asynqueue_arena" if COMPILED
                         else "default_allocator")

    @defer.inlineCallbacks
    def test_resultSentWhereItLies(self):
        """A result born in the arena reaches the caller at the offset
        where the child made it: nothing was copied."""
        if not COMPILED:
            raise SkipTest("the pure-Python path copies results")
        q = self.makeQueue()
        worker = self.workerOf(q)
        yield self.warmUp(q)
        for value in range(5):
            array, offset = yield q.call(procfuncs.bornArray, LARGE, value)
            self.assertTrue((array == value).all())
            self.assertIsNotNone(offset)
            arena = worker.process.replyArenas[worker.process.replyGeneration]
            base = numpy.frombuffer(arena._segment.buffer, numpy.uint8)
            self.assertEqual(array.ctypes.data - base.ctypes.data, offset)
            del base, array
        generation = worker.process.replyGeneration
        for value in range(20):
            yield q.call(procfuncs.bornArray, LARGE, value)
        self.assertEqual(worker.process.replyGeneration, generation)

    @defer.inlineCallbacks
    def test_resultTheChildKeepsStaysPrivate(self):
        """A result the child keeps and changes later is the caller's own
        copy all the same."""
        q = self.makeQueue()
        yield self.warmUp(q)
        result = yield q.call(procfuncs.keepNew, "kept", LARGE, 1.0)
        self.assertEqual((yield q.call(procfuncs.bump, "kept")), 2.0)
        self.assertTrue((result == 1.0).all())
        result += 5.0
        self.assertEqual((yield q.call(procfuncs.bump, "kept")), 3.0)
        yield q.call(procfuncs.setGlobal, "kept", None)

    @defer.inlineCallbacks
    def test_keptArraysOutliveArenaGrowth(self):
        """Arrays the child keeps in an arena that a bigger one replaces
        stay valid; the old arena goes once they do."""
        q = self.makeQueue()
        worker = self.workerOf(q)
        yield self.warmUp(q)
        yield q.call(procfuncs.keepNew, "kept", LARGE, 5.0)
        first = worker.process.replyGeneration
        big = numpy.arange(6 * LARGE, dtype=numpy.uint8)
        for _ in range(2):
            result = yield q.call(procfuncs.twice, big)
            self.assertTrue(numpy.array_equal(result, big * 2))
        self.assertGreater(worker.process.replyGeneration, first)
        self.assertEqual((yield q.call(procfuncs.bump, "kept")), 6.0)
        yield q.call(procfuncs.setGlobal, "kept", None)
        result = yield q.call(procfuncs.twice, big)
        self.assertTrue(numpy.array_equal(result, big * 2))

    @defer.inlineCallbacks
    def test_grownAndZeroedArrays(self):
        """numpy's realloc and calloc of arena arrays: a grown array keeps
        its values, a zeroed one is zeros where other arrays lay."""
        q = self.makeQueue()
        yield self.warmUp(q)
        n = LARGE // 8
        for _ in range(2):
            grown, zeros = yield q.call(procfuncs.grownAndZeros, LARGE)
            self.assertTrue(numpy.array_equal(grown[:n], numpy.arange(n)))
            self.assertFalse(grown[n:].any())
            self.assertEqual(len(grown), 2 * n)
            self.assertFalse(zeros.any())

    @defer.inlineCallbacks
    def test_churnKeepsEveryResultRight(self):
        """Two pipelined workers make, keep, change and drop arrays of many
        sizes at random while the caller keeps some results: every result
        is right when it arrives, and still right at the end."""
        q = self.makeQueue(2, pipelining=4)
        kept = []
        for batch in range(4):
            seeds = range(batch * 15, batch * 15 + 15)
            results = yield defer.gatherResults(
                [q.call(procfuncs.churn, seed) for seed in seeds])
            for seed, arrays in zip(seeds, results):
                self.assertChurned(seed, arrays)
                if seed % 4 == 0:
                    kept.append((seed, arrays))
        for seed, arrays in kept:
            self.assertChurned(seed, arrays)

    def assertChurned(self, seed, arrays):
        expected = procfuncs.churnExpected(seed)
        self.assertEqual([len(a) for a in arrays], [n for n, _ in expected])
        for array, (_, value) in zip(arrays, expected):
            self.assertTrue((array == value).all(), "seed {}".format(seed))

    @defer.inlineCallbacks
    def test_temporariesLargerThanTheArena(self):
        q = self.makeQueue()
        yield self.warmUp(q)
        n = 3 * LARGE
        total = yield q.call(procfuncs.temporaries, n)
        self.assertAlmostEqual(
            total, float(numpy.sqrt(numpy.arange(n) * 2.0 + 1.0).sum()),
            delta=1e-6 * total)

    @defer.inlineCallbacks
    def test_forkedCopyLeavesTheArenaAlone(self):
        """A fork of the child neither takes arena memory nor frees what
        the child holds."""
        q = self.makeQueue()
        yield self.warmUp(q)
        kept, fresh = yield q.call(procfuncs.forkAndChurn, LARGE)
        self.assertEqual((kept, fresh), (4.0 * LARGE // 8, 6.0 * LARGE // 8))
