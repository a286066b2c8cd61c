"""
Tests of asynqueue.threads, part two: the bridges between Twisted producers
and consumers and blocking code (PoolUser, IterationGetter, Consumerator,
Filerator, OrderedItemProducer), through the public API.

As in part one, nothing depends on how long anything takes, and no thread a
test started outlives it (the shared pool is shut down after each test).
"""
import json
import random
import threading

from twisted.internet import defer, reactor
from twisted.internet.interfaces import IPullProducer, IPushProducer
from twisted.python.threadable import isInIOThread
from zope.interface import implementer

from asynqueue import threads
from asynqueue.threads import (
    Consumerator, Filerator, IterationGetter, OrderedItemProducer, PoolUser)

from test_threads import ThreadsTestCase, _shutdownTriggers, blockUntil


@implementer(IPushProducer)
class CountingProducer:
    """
    Writes 0, 1, ... N-1 to its consumer, one per reactor turn, honouring
    pause, then unregisters. With ``stallAfter`` it stops writing after
    that many items (firing ``dStalled``) without unregistering.
    """

    def __init__(self, consumer, N, stallAfter=None, register=True):
        self.consumer, self.N, self.stallAfter = consumer, N, stallAfter
        self.k = 0
        self.paused = self.stopped = False
        self.pauses = 0
        self.call = None
        self.dStalled = defer.Deferred()
        if register:
            consumer.registerProducer(self, True)
        self._schedule()

    def _schedule(self):
        if self.call is None and not (self.paused or self.stopped):
            self.call = reactor.callLater(0, self._produce)

    def _produce(self):
        self.call = None
        if self.paused or self.stopped:
            return
        if self.k == self.stallAfter:
            self.dStalled.callback(self.k)
        elif self.k < self.N:
            self.consumer.write(self.k)
            self.k += 1
            self._schedule()
        else:
            self.stopped = True
            self.consumer.unregisterProducer()

    def pauseProducing(self):
        self.paused = True
        self.pauses += 1

    def resumeProducing(self):
        self.paused = False
        self._schedule()

    def stopProducing(self):
        self.stopped = True
        if self.call is not None and self.call.active():
            self.call.cancel()


@implementer(IPullProducer)
class CountingPullProducer:
    """Writes the next of 0, 1, ... N-1 each time it is asked, then
    unregisters."""

    def __init__(self, consumer, N):
        self.consumer, self.N, self.k = consumer, N, 0
        self.asked = 0
        consumer.registerProducer(self, False)

    def resumeProducing(self):
        self.asked += 1
        if self.k < self.N:
            self.consumer.write(self.k)
            self.k += 1
        elif self.k == self.N:
            self.k += 1
            self.consumer.unregisterProducer()

    def stopProducing(self):
        self.k = self.N + 1


def doubled(iterator):
    """A blocking user of an iterator."""
    return [2 * x for x in iterator]


def inReactorThread(iterator):
    """Whether each item was taken in the reactor thread."""
    return [isInIOThread() for _ in iterator]


class BridgeTestCase(ThreadsTestCase):
    """Shuts the shared pool down after each test, before the thread
    check."""

    @defer.inlineCallbacks
    def tearDown(self):
        yield defer.gatherResults([q.shutdown() for q in self.queues])
        yield PoolUser.shutdown()
        self.assertNoThreadsLeft()


class TestPoolUser(BridgeTestCase):

    @defer.inlineCallbacks
    def test_deferToThreadInPool(self):
        name = yield PoolUser.deferToThreadInPool(
            lambda: threading.current_thread().name)
        self.assertIn("AsynQueue.IterationGetter", name)
        self.assertEqual((yield PoolUser.deferToThreadInPool(divmod, 7, 2)),
                         (3, 1))
        yield self.assertFailure(
            PoolUser.deferToThreadInPool(divmod, 1, 0), ZeroDivisionError)

    @defer.inlineCallbacks
    def test_shutdownStopsPoolOffTheReactorThread(self):
        yield PoolUser.deferToThreadInPool(sum, [1])
        pool, stops = PoolUser._pool, []
        stop = pool.stop
        pool.stop = lambda: stops.append(isInIOThread()) or stop()
        yield PoolUser.shutdown()
        self.assertEqual(stops, [False])
        self.assertIsNone(PoolUser._pool)
        self.assertFalse(pool.started)
        yield PoolUser.shutdown()   # Again: harmless
        self.assertEqual((yield PoolUser.deferToThreadInPool(sum, [2])), 2)

    def test_shutdownTrigger(self):
        before = _shutdownTriggers()
        PoolUser.setup()
        self.assertEqual(_shutdownTriggers(), before + 1)
        return PoolUser.shutdown().addCallback(
            lambda _: self.assertEqual(_shutdownTriggers(), before))

    @defer.inlineCallbacks
    def test_setupResizesSharedPool(self):
        self.addCleanup(PoolUser.setup, PoolUser.maxThreads)
        PoolUser.setup(maxThreads=3)
        self.assertEqual(PoolUser._pool.max, 3)
        self.assertEqual(Filerator(maxThreads=4).pool.max, 4)
        self.assertIs(Consumerator().pool, PoolUser._pool)
        yield PoolUser.deferToThreadInPool(sum, [])


class OneValueGetter(IterationGetter):
    """A 0.9-style subclass: one value per run of ``loop``."""

    def loop(self):
        self.runState = "running"
        self.cLock.acquire()
        value = self.value
        self.nLock.acquire()
        self.bIterationValue = value
        self.bLock.release()
        self.runState = "stopping"


class TestIterationGetter(BridgeTestCase):

    @defer.inlineCallbacks
    def test_subclassHandshake(self):
        getter = OneValueGetter()
        for value in range(3):
            getter.start()
            getter.value = value
            getter.cLock.release()
            got = yield PoolUser.deferToThreadInPool(getter.next)
            self.assertEqual(got, value)
        results = yield getter.deferUntilDone()
        self.assertEqual(len(results), 3)


class TestConsumerator(BridgeTestCase):

    @defer.inlineCallbacks
    def test_blockingUserWithPushProducer(self):
        consumer = Consumerator()
        producer = CountingProducer(consumer, 50)
        q = self.makeThreadQueue()
        self.assertEqual((yield q.call(doubled, consumer)),
                         [2 * k for k in range(50)])
        self.assertGreater(producer.pauses, 0)
        yield consumer.deferUntilDone()
        self.assertEqual(consumer.runState, "stopped")
        self.assertIsNone(consumer.producer)

    @defer.inlineCallbacks
    def test_producerGivenToConstructor(self):
        producer = CountingProducer(None, 5, register=False)
        consumer = Consumerator(producer)
        producer.consumer = consumer
        self.assertIs(consumer.producer, producer)
        self.assertTrue(consumer.streaming)
        q = self.makeThreadQueue()
        self.assertEqual((yield q.call(list, consumer)), list(range(5)))

    @defer.inlineCallbacks
    def test_pullProducer(self):
        consumer = Consumerator()
        producer = CountingPullProducer(consumer, 20)
        values = yield PoolUser.deferToThreadInPool(list, consumer)
        self.assertEqual(values, list(range(20)))
        yield consumer.deferUntilDone()
        self.assertEqual(producer.asked, 21)

    @defer.inlineCallbacks
    def test_fedByIterationFromAnotherThread(self):
        """A ThreadWorker's iteration feeds a Consumerator read by a
        blocking user in another ThreadQueue."""
        source, user = self.makeThreadQueue(), self.makeThreadQueue()
        consumer = Consumerator()
        dFed = source.call(lambda: iter(range(30)), consumer=consumer)
        self.assertEqual((yield user.call(list, consumer)), list(range(30)))
        self.assertIs((yield dFed), consumer)

    @defer.inlineCallbacks
    def test_writesBeforeIterating(self):
        consumer = Consumerator()
        writes = [consumer.write(k) for k in "abc"]
        dDone = consumer.unregisterProducer()
        self.assertFalse(any(d.called for d in writes))
        values = yield PoolUser.deferToThreadInPool(list, consumer)
        self.assertEqual(values, ["a", "b", "c"])
        yield defer.gatherResults(writes + [dDone])
        self.assertIsNone((yield Consumerator().unregisterProducer()))

    @defer.inlineCallbacks
    def test_stop(self):
        consumer = Consumerator()
        producer = CountingProducer(consumer, 1000, stallAfter=5)
        q = self.makeThreadQueue()
        dValues = q.call(list, consumer)
        yield producer.dStalled
        yield consumer.stop()
        self.assertTrue(producer.stopped)
        self.assertEqual((yield dValues), list(range(5)))

    @defer.inlineCallbacks
    def test_newProducerAfterTheLast(self):
        consumer = Consumerator()
        q = self.makeThreadQueue()
        for N in (3, 4):
            CountingProducer(consumer, N)
            self.assertEqual((yield q.call(list, consumer)), list(range(N)))

    def test_iteratingInReactorThread(self):
        consumer = Consumerator()
        consumer.write(7)
        self.assertEqual(next(consumer), 7)
        self.assertRaises(RuntimeError, next, consumer)
        return consumer.stop()

    def test_secondProducerRefused(self):
        consumer = Consumerator()
        CountingProducer(consumer, 1, stallAfter=0)
        self.assertRaises(
            RuntimeError, consumer.registerProducer, object(), True)
        return consumer.stop()

    @defer.inlineCallbacks
    def test_reactorShutdownEndsBlockingIteration(self):
        """At reactor shutdown, blocking iterations waiting for a producer
        that will never write again end, so that nothing hangs."""
        consumer = Consumerator()
        producer = CountingProducer(consumer, 1000, stallAfter=3)
        q = self.makeThreadQueue()
        dValues = q.call(list, consumer)
        yield producer.dStalled
        triggerID = PoolUser._triggerID
        try:
            yield PoolUser._reactorShutdown()   # What the trigger does
        finally:
            reactor.removeSystemEventTrigger(triggerID)
        self.assertEqual((yield dValues), [0, 1, 2])
        producer.stopProducing()


class TestFilerator(BridgeTestCase):

    @defer.inlineCallbacks
    def test_usedAsFileByBlockingCode(self):
        writer = threads.ThreadWorker(series=["writer"])
        reader = threads.ThreadWorker(series=["reader"])
        q = self.makeQueue(writer, reader)
        f = Filerator()
        stuff = {"rows": list(range(20)), "name": "filerator"}

        def write(fh):
            for k in range(50):
                print("line", k, file=fh)
            json.dump(stuff, fh)
            fh.writelines(["\n", "end"])
            fh.flush()
            fh.close()
        dWritten = q.call(write, f, series="writer")
        text = yield q.call("".join, f, series="reader")
        yield dWritten
        lines = text.split("\n")
        self.assertEqual(lines[:50], ["line {}".format(k) for k in range(50)])
        self.assertEqual(json.loads(lines[50]), stuff)
        self.assertEqual(lines[51], "end")
        yield f.deferUntilDone()
        self.assertTrue(f.closed)

    @defer.inlineCallbacks
    def test_writesBeforeIterationNeverStall(self):
        f = Filerator()
        for k in range(5):
            f.write(k)
        self.assertFalse(f.closed)
        f.close()
        self.assertTrue(f.closed)
        f.close()
        self.assertRaises(ValueError, f.write, 5)
        values = yield PoolUser.deferToThreadInPool(list, f)
        self.assertEqual(values, list(range(5)))
        yield f.deferUntilDone()
        self.assertEqual(f.runState, "stopped")

    @defer.inlineCallbacks
    def test_writtenFromReactorReadInThread(self):
        f = Filerator()

        def writeFrom(k):
            if k < 40:
                f.write(k)
                reactor.callLater(0, writeFrom, k + 1)
            else:
                f.close()
        writeFrom(0)
        values = yield PoolUser.deferToThreadInPool(inReactorThread, f)
        self.assertEqual(values, [False] * 40)


class TestOrderedItemProducer(BridgeTestCase):

    def setUp(self):
        super().setUp()
        self.p = OrderedItemProducer()

    @defer.inlineCallbacks
    def test_produceItem(self):
        yield self.p.start(list)
        self.assertEqual((yield self.p.produceItem(lambda: 15)), 15)
        self.assertEqual((yield self.p.stop()), [15])
        self.assertIsNone((yield self.p.stop()))
        self.assertIsNone((yield self.p.produceItem(lambda: 16)))

    @defer.inlineCallbacks
    def test_orderUnderAnyCompletionOrder(self):
        for seed in range(4):
            p = OrderedItemProducer()
            yield p.start(doubled)
            pending = [defer.Deferred() for _ in range(25)]
            produced = [p.produceItem(lambda d=d: d) for d in pending]
            for k in random.Random(seed).sample(range(25), 25):
                pending[k].callback(k)
            self.assertEqual((yield p.stop()), [2 * k for k in range(25)])
            self.assertEqual(
                (yield defer.gatherResults(produced)), list(range(25)))

    @defer.inlineCallbacks
    def test_itemsFromThreadWorkersFinishingInAnyOrder(self):
        gates = [self.gate() for _ in range(12)]
        q = self.makeQueue(*[threads.ThreadWorker() for _ in range(4)])
        yield self.p.start(list)
        produced = [self.p.produceItem(q.call, blockUntil, gates[k], k)
                    for k in range(12)]
        for k in random.Random(5).sample(range(12), 12):
            gates[k].set()
        self.assertEqual((yield self.p.stop()), list(range(12)))
        self.assertEqual(
            (yield defer.gatherResults(produced)), list(range(12)))

    @defer.inlineCallbacks
    def test_writesNothingWhilePaused(self):
        """While the blocking user has not taken an item, the producer is
        paused: later items wait, unwritten, in order."""
        gate = self.gate()
        yield self.p.start(lambda i: blockUntil(gate, list(i)))
        for k in range(5):
            self.p.produceItem(lambda k=k: k)
        self.assertIs(self.p.produce, False)
        self.assertEqual(self.p.k2, 1)
        self.assertEqual(sorted(self.p.itemBuffer), [1, 2, 3, 4])
        gate.set()
        self.assertEqual((yield self.p.stop()), list(range(5)))

    @defer.inlineCallbacks
    def test_resumeAfterExternalPause(self):
        self.p.pauseProducing()
        produced = [self.p.produceItem(lambda k=k: k) for k in range(3)]
        self.assertEqual(self.p.k2, 0)
        yield self.p.start(list)
        self.p.resumeProducing()
        self.assertEqual((yield defer.gatherResults(produced)), [0, 1, 2])
        self.assertEqual((yield self.p.stop()), [0, 1, 2])

    @defer.inlineCallbacks
    def test_errorOfAnItemEndsIterationThere(self):
        yield self.p.start(list)
        pending = [defer.Deferred() for _ in range(6)]
        produced = [self.p.produceItem(lambda d=d: d) for d in pending]
        pending[3].errback(ValueError("item 3"))
        for k in (5, 4, 2, 1, 0):
            pending[k].callback(k)
        self.assertIsNone((yield self.p.produceItem(lambda: 9)))
        error = yield self.assertFailure(self.p.stop(), ValueError)
        self.assertEqual(str(error), "item 3")
        self.assertEqual(
            (yield defer.gatherResults(produced)), [0, 1, 2, None, 4, 5])

    @defer.inlineCallbacks
    def test_errorOfBlockingUser(self):
        def fussy(iterator):
            for item in iterator:
                if item == 1:
                    raise ValueError("no ones")
        yield self.p.start(fussy)
        produced = [self.p.produceItem(lambda k=k: k) for k in range(5)]
        yield self.assertFailure(self.p.stop(), ValueError)
        self.assertEqual((yield defer.gatherResults(produced)), list(range(5)))

    @defer.inlineCallbacks
    def test_blockingUserEndsEarly(self):
        def firstTwo(iterator):
            return [next(iterator), next(iterator)]
        yield self.p.start(firstTwo)
        produced = [self.p.produceItem(lambda k=k: k) for k in range(5)]
        self.assertEqual((yield self.p.stop()), [0, 1])
        self.assertEqual((yield defer.gatherResults(produced)), list(range(5)))

    @defer.inlineCallbacks
    def test_stopWithoutStart(self):
        produced = self.p.produceItem(lambda: 1)
        self.assertIsNone((yield self.p.stop()))
        self.assertEqual((yield produced), 1)

