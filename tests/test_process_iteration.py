"""
Tests of iterators returned by calls to process workers: Deferators that
fetch items from the child in batches, consumers, empty and failing
iterators, and iterators dropped early.
"""
from twisted.internet import defer

from asynqueue.iteration import Deferator, IterationProducer, ListConsumer
from asynqueue.process import ChildProcess

import procfuncs
from proccase import ProcessTestCase, collect


class TestIteration(ProcessTestCase):

    def countFetches(self):
        """Count the batches asked of children from now on."""
        fetches = []
        fetch = ChildProcess.fetch

        def counting(child, requestID, iteratorID, size):
            fetches.append(size)
            return fetch(child, requestID, iteratorID, size)
        self.patch(ChildProcess, "fetch", counting)
        return fetches

    @defer.inlineCallbacks
    def test_generatorGivesDeferator(self):
        q = self.makeQueue()
        dr = yield q.call(procfuncs.generator, 10)
        self.assertIsInstance(dr, Deferator)
        self.assertEqual((yield collect(dr)), list(range(10)))
        self.assertTrue((yield dr.d))

    @defer.inlineCallbacks
    def test_itemsFetchedInBatches(self):
        """1000 items, 100 per batch: 10 round trips, not 1000."""
        q = self.makeQueue(iterationBatch=100)
        fetches = self.countFetches()
        dr = yield q.call(procfuncs.generator, 1000)
        self.assertEqual((yield collect(dr)), list(range(1000)))
        self.assertEqual(fetches, [100] * 10)

    @defer.inlineCallbacks
    def test_consumer(self):
        q = self.makeQueue()
        consumer = ListConsumer()
        result = yield q.call(procfuncs.generator, 50, consumer=consumer)
        self.assertIs(result, consumer)
        self.assertEqual((yield consumer()), list(range(50)))

    @defer.inlineCallbacks
    def test_consumerGetsProducer(self):
        """With a consumer, the worker's result is an IterationProducer
        (seen here through a worker run directly)."""
        from asynqueue.tasks import Task
        q = self.makeQueue()
        worker = self.workerOf(q)
        consumer = ListConsumer()
        task = Task(procfuncs.generator, (3,), {"consumer": consumer},
                    0, None)
        worker.run(task)
        status, producer = yield task.d
        self.assertEqual(status, b'i')
        self.assertIsInstance(producer, IterationProducer)
        yield producer.run()
        self.assertEqual((yield consumer()), [0, 1, 2])

    @defer.inlineCallbacks
    def test_emptyIterator(self):
        q = self.makeQueue()
        self.assertEqual((yield q.call(procfuncs.emptyGenerator)), [])
        self.assertEqual((yield q.call(procfuncs.generator, 0)), [])

    @defer.inlineCallbacks
    def test_iteratorRaisingMidwayEndsCleanly(self):
        q = self.makeQueue(iterationBatch=3)
        dr = yield q.call(procfuncs.failingGenerator, 5)
        self.assertEqual((yield collect(dr)), list(range(5)))
        self.assertEqual((yield q.call(procfuncs.inc, 1)), 2)

    @defer.inlineCallbacks
    def test_unpicklableItemEndsIteration(self):
        q = self.makeQueue(iterationBatch=2)
        dr = yield q.call(procfuncs.lockGenerator)
        items = yield collect(dr)
        # A Deferator's last step gives None when it finds nothing (0.9).
        self.assertEqual(items, [1, 2, None])
        self.assertEqual((yield q.call(procfuncs.inc, 1)), 2)

    @defer.inlineCallbacks
    def test_droppedDeferatorFreesChildIterator(self):
        q = self.makeQueue(iterationBatch=10)
        dr = yield q.call(procfuncs.countingGenerator, 1000)
        self.assertEqual((yield next(dr)), 0)
        self.assertEqual((yield q.call(procfuncs.closedIterators)), 0)
        dr.stop()
        self.assertFalse((yield dr.d))
        closed = yield q.call(procfuncs.closedIterators)
        self.assertEqual(closed, 1)

    @defer.inlineCallbacks
    def test_garbageDeferatorFreesChildIterator(self):
        """A Deferator that is simply forgotten frees the child's iterator
        too, once it is garbage collected."""
        import gc
        from twisted.internet import reactor, task
        q = self.makeQueue(iterationBatch=10)
        dr = yield q.call(procfuncs.countingGenerator, 1000)
        self.assertEqual((yield next(dr)), 0)
        del dr
        yield task.deferLater(reactor, 0, lambda: None)
        gc.collect()
        yield task.deferLater(reactor, 0, lambda: None)
        self.assertEqual((yield q.call(procfuncs.closedIterators)), 1)

    @defer.inlineCallbacks
    def test_manyIteratorsAtOnce(self):
        q = self.makeQueue(2, iterationBatch=7)
        drs = yield defer.gatherResults(
            [q.call(procfuncs.generator, n) for n in range(1, 30)])
        lists = yield defer.gatherResults([collect(dr) for dr in drs])
        self.assertEqual(lists, [list(range(n)) for n in range(1, 30)])

    @defer.inlineCallbacks
    def test_iteratorOfDeadChildFails(self):
        """A child killed while its iterator is consumed: the Deferator
        fails instead of hanging."""
        import os
        import signal
        q = self.makeQueue(iterationBatch=5)
        worker = self.workerOf(q)
        dr = yield q.call(procfuncs.generator, 100)
        self.assertEqual((yield next(dr)), 0)
        old = worker.process
        os.kill(old.pid, signal.SIGKILL)
        yield self.replaced(worker, old)
        items = []
        try:
            for d in dr:
                items.append((yield d))
        except defer.CancelledError:
            pass
        else:
            self.fail("a dead child's iterator went on")
        self.assertEqual(items, [1, 2, 3, 4])
        self.assertEqual((yield q.call(procfuncs.inc, 1)), 2)
