"""
Tests of asynqueue.base: Priority, LoadInfoProducer, Queue and TaskQueue,
through the public API (AsyncWorker and scripted workers do the work).
"""
import gc

from twisted.internet import defer, reactor
from twisted.internet.defer import CancelledError
from twisted.trial import unittest

from asynqueue import _speedups as speedups, errors
from asynqueue.base import LoadInfoProducer, Priority, Queue, TaskQueue
from asynqueue.null import NullQueue
from asynqueue.workers import AsyncWorker

from support import (
    RecordingConsumer, ScriptedWorker, capturedLog, capturedStderr)


def square(x):
    return x * x


def divide(x, y):
    return x / y


class TestPriority(unittest.TestCase):

    def test_getWaitsForPut(self):
        p = Priority()
        d = p.get()
        self.assertFalse(d.called)
        p.put(5)
        self.assertEqual(self.successResultOf(d), 5)

    def test_lowestFirstNoneLast(self):
        p = Priority()
        for item in (4, None, 1, 3):
            p.put(item)
        got = [self.successResultOf(p.get()) for _ in range(4)]
        self.assertEqual(got, [1, 3, 4, None])

    def test_gettersServedInOrder(self):
        p = Priority()
        first, second = p.get(), p.get()
        p.put(2)
        self.assertTrue(first.called)
        self.assertFalse(second.called)
        p.put(1)
        self.assertEqual(self.successResultOf(second), 1)

    def test_cancelRemovesEverySelected(self):
        p = Priority()
        for item in range(6):
            p.put(item)
        self.assertEqual(p.cancel(lambda x: True), list(range(6)))
        self.assertEqual(len(p.heap), 0)

    def test_cancelFailsTaskDeferreds(self):
        from asynqueue.tasks import Task
        p = Priority()
        task = Task(square, (2,), {}, 1.0, None)
        p.put(task)
        p.put(7)
        self.assertEqual(p.cancel(lambda x: x is task), [task])
        self.failureResultOf(task.d, CancelledError)
        self.assertEqual(self.successResultOf(p.get()), 7)

    def test_shutdownFailsGetters(self):
        p = Priority()
        d = p.get()
        p.shutdown()
        self.failureResultOf(d, errors.QueueRunError)


class TestLoadInfoProducer(unittest.TestCase):

    def test_countsAndWrites(self):
        producer, consumer = LoadInfoProducer(), RecordingConsumer()
        producer.registerConsumer(consumer)
        self.assertIs(consumer.producer, producer)
        producer.oneMore()
        producer.oneMore()
        producer.oneLess()
        producer.oneLess()
        producer.oneLess()
        self.assertEqual(consumer.written, [1, 2, 1, 0, 0])
        producer.pauseProducing()
        producer.oneMore()
        self.assertEqual(len(consumer.written), 5)
        producer.resumeProducing()
        producer.shutdown()
        self.assertIsNone(consumer.producer)

    def test_consumerWithProducerIgnored(self):
        producer, consumer = LoadInfoProducer(), RecordingConsumer()
        consumer.producer = object()
        producer.registerConsumer(consumer)
        self.assertEqual(producer.consumers, [])


class RecordingHandler:
    """A blocking Queue handler: each item waits for ``finish()``."""

    def __init__(self):
        self.items = []
        self.waiting = []

    def __call__(self, item):
        self.items.append(item)
        d = defer.Deferred()
        self.waiting.append(d)
        return d

    def finish(self):
        self.waiting.pop(0).callback(None)

    def shutdown(self, timeout=None):
        return defer.succeed(["unfinished"])


class TestQueue(unittest.TestCase):

    def test_blockingHandlerGetsItemsByPriority(self):
        handler = RecordingHandler()
        q = Queue(handler)
        for item in (5, 3, 1, 4):
            q.put(item)
        self.assertEqual(handler.items, [5])
        for _ in range(3):
            handler.finish()
        self.assertEqual(handler.items, [5, 1, 3, 4])
        handler.finish()
        d = q.shutdown()
        self.assertEqual(self.successResultOf(d), ["unfinished"])
        self.assertFalse(q.isRunning())
        self.assertEqual(self.successResultOf(q.shutdown()), ["unfinished"])

    def test_subscribeNeedsConsumer(self):
        q = Queue(RecordingHandler())
        self.assertRaises(errors.ImplementationError, q.subscribe, object())
        consumer = RecordingConsumer()
        q.subscribe(consumer)
        q.put(1)
        q.put(2)
        self.assertEqual(consumer.written, [1, 0, 1])
        q.cancelAll()
        self.assertEqual(consumer.written[-1], 0)


class QueueTestCase(unittest.TestCase):
    """Makes TaskQueues and shuts them down after each test."""

    def setUp(self):
        self.queues = []

    def makeQueue(self, *workers, **kw):
        kw.setdefault("returnFailure", True)
        q = TaskQueue(*workers, **kw)
        self.queues.append(q)
        return q

    def tearDown(self):
        return defer.gatherResults([q.shutdown() for q in self.queues])


class TestTaskQueueCalls(QueueTestCase):

    @defer.inlineCallbacks
    def test_callReturnsResult(self):
        q = self.makeQueue(AsyncWorker())
        self.assertEqual((yield q.call(square, 7)), 49)

    @defer.inlineCallbacks
    def test_deferredResult(self):
        q = self.makeQueue(AsyncWorker())

        def later(x):
            d = defer.Deferred()
            reactor.callLater(0, d.callback, x + 1)
            return d
        self.assertEqual((yield q.call(later, 1)), 2)

    @defer.inlineCallbacks
    def test_priorityOrder(self):
        """Niceness, doNext and doLast decide the order of waiting tasks."""
        worker = ScriptedWorker(hold=True)
        q = self.makeQueue(worker)
        order = []
        q.call(order.append, "first")
        calls = [
            q.call(order.append, "last", doLast=True),
            q.call(order.append, "nice", niceness=20),
            q.call(order.append, "normal"),
            q.call(order.append, "eager", niceness=-20),
            q.call(order.append, "next", doNext=True),
        ]
        while worker.held:
            worker.release(1)
            yield defer.succeed(None)
        yield defer.gatherResults(calls)
        self.assertEqual(
            order, ["first", "next", "eager", "normal", "nice", "last"])

    @defer.inlineCallbacks
    def test_queueKeywordsNeverReachFunction(self):
        q = self.makeQueue(AsyncWorker())

        def keywords(**kw):
            return kw
        kw = yield q.call(
            keywords, a=1, niceness=3, series=None, timeout=10,
            doNext=True, doLast=False, returnFailure=True, raw=False)
        self.assertEqual(kw, {"a": 1})

    def test_badNiceness(self):
        q = self.makeQueue(AsyncWorker())
        self.assertRaises(ValueError, q.call, square, 1, niceness=21)
        self.assertRaises(ValueError, q.call, square, 1, niceness="0")

    @defer.inlineCallbacks
    def test_callAfterShutdownNamesCall(self):
        q = self.makeQueue(AsyncWorker())
        yield q.shutdown()
        error = self.assertRaises(errors.QueueRunError, q.call, square, 3)
        self.assertIn("square(3)", str(error))

    @defer.inlineCallbacks
    def test_manyTasks(self):
        q = self.makeQueue(AsyncWorker(), AsyncWorker())
        results = yield defer.gatherResults(
            [q.call(square, x) for x in range(2000)])
        self.assertEqual(results, [x * x for x in range(2000)])

    @defer.inlineCallbacks
    def test_boolAndLen(self):
        q = self.makeQueue()
        self.assertFalse(q)
        self.assertEqual(len(q), 0)
        yield q.attachWorker(AsyncWorker())
        self.assertTrue(q)
        self.assertEqual(len(q), 1)
        yield q.shutdown()
        self.assertFalse(q)


class TestSeries(QueueTestCase):

    @defer.inlineCallbacks
    def test_seriesRunsOnQualifiedWorkers(self):
        plain, special = AsyncWorker(), AsyncWorker(series=["special"])
        q = self.makeQueue(plain, special)
        ran = []

        def where(name):
            ran.append(name)
        yield defer.gatherResults(
            [q.call(where, n, series="special") for n in range(10)])
        self.assertEqual(ran, list(range(10)))
        self.assertEqual(plain.iQualified, [])

    @defer.inlineCallbacks
    def test_noHeadOfLineBlocking(self):
        """A series with no worker never stalls other tasks."""
        q = self.makeQueue(AsyncWorker())
        stranded = q.call(square, 2, series="nobody")
        self.assertEqual((yield q.call(square, 3)), 9)
        self.assertFalse(stranded.called)
        helper = AsyncWorker(series=["nobody"])
        yield q.attachWorker(helper)
        self.assertEqual((yield stranded), 4)

    @defer.inlineCallbacks
    def test_busySeriesDoesNotBlockOthers(self):
        busy = ScriptedWorker(series=["slow"], hold=True)
        q = self.makeQueue(AsyncWorker())
        yield q.attachWorker(busy)
        q.call(square, 1, series="slow")
        waiting = q.call(square, 2, series="slow")
        self.assertEqual((yield q.call(square, 5)), 25)
        busy.release()
        yield defer.succeed(None)
        busy.release()
        self.assertEqual((yield waiting), 4)

    def test_seriesDefaultsNotShared(self):
        one, two = AsyncWorker(), AsyncWorker()
        q = self.makeQueue(one, two)
        q.qualifyWorker(one, "x")
        self.assertEqual(one.iQualified, ["x"])
        self.assertEqual(two.iQualified, [])
        self.assertEqual(q.th.roster("x"), [one])

    @defer.inlineCallbacks
    def test_qualifyWorkerTakesSeries(self):
        worker = AsyncWorker()
        q = self.makeQueue(worker)
        d = q.call(square, 6, series="late")
        self.assertFalse(d.called)
        q.qualifyWorker(worker, "late")
        self.assertEqual((yield d), 36)


class TestErrors(QueueTestCase):

    @defer.inlineCallbacks
    def test_returnFailure(self):
        q = self.makeQueue(AsyncWorker())
        try:
            yield q.call(divide, 1, 0)
        except errors.WorkerError as error:
            self.assertIn("Failure 'division by zero", str(error))
        else:
            self.fail("no WorkerError")

    @defer.inlineCallbacks
    def test_workerSurvivesErrors(self):
        q = self.makeQueue(AsyncWorker())
        for _ in range(3):
            yield self.assertFailure(q.call(divide, 1, 0), errors.WorkerError)
        self.assertEqual((yield q.call(divide, 4, 2)), 2)

    @defer.inlineCallbacks
    def test_warnLogsAndReturnsText(self):
        q = self.makeQueue(AsyncWorker(), returnFailure=False, warn=True)
        with capturedLog() as records:
            text = yield q.call(divide, 1, 0)
        self.assertIn("division by zero", text)
        self.assertEqual(len(records), 1)
        self.assertIsNone(q._dc)

    @defer.inlineCallbacks
    def test_defaultPolicyStopsReactorLater(self):
        """The 0.9 default: text as result, stderr, a reactor stop in 1 s
        (cancelled here by shutdown)."""
        q = self.makeQueue(AsyncWorker(), returnFailure=False)
        with capturedStderr() as stderr:
            text = yield q.call(divide, 1, 0)
            written = stderr.getvalue()
        self.assertIn("division by zero", text)
        self.assertIn("ERROR:", written)
        self.assertIn("Shutting down in one second!", written)
        self.assertTrue(q._dc.active())
        yield q.shutdown()
        self.assertFalse(q._dc.active())

    @defer.inlineCallbacks
    def test_perCallReturnFailure(self):
        q = self.makeQueue(AsyncWorker(), returnFailure=False, warn=True)
        yield self.assertFailure(
            q.call(divide, 1, 0, returnFailure=True), errors.WorkerError)

    @defer.inlineCallbacks
    def test_unknownStatus(self):
        q = self.makeQueue(ScriptedWorker(script=[(b'?', None)]))
        yield self.assertFailure(q.call(square, 1), errors.WorkerError)

    @defer.inlineCallbacks
    def test_statusN(self):
        q = self.makeQueue(ScriptedWorker(script=[(b'n', "ignored")]))
        self.assertIsNone((yield q.call(square, 1)))


class TestRetries(QueueTestCase):

    @defer.inlineCallbacks
    def test_disconnectRetriedOnce(self):
        worker = ScriptedWorker(script=[(b'd', None)])
        q = self.makeQueue(worker)
        self.assertEqual((yield q.call(square, 3)), 9)
        self.assertEqual(len(worker.ran), 2)
        self.assertEqual(q.tasksBeingRetried, [])

    @defer.inlineCallbacks
    def test_disconnectTwiceGivesUp(self):
        worker = ScriptedWorker(script=[(b'd', None), (b'd', None)])
        q = self.makeQueue(worker)
        yield self.assertFailure(q.call(square, 3), errors.WorkerError)

    @defer.inlineCallbacks
    def test_timeoutRetriesOnceThenFails(self):
        worker = ScriptedWorker(hold=True)
        q = self.makeQueue(worker)
        d = q.call(square, 3, timeout=0.01)
        yield self.assertFailure(d, errors.TimeoutError)
        self.assertEqual(len(worker.ran), 2)
        self.assertEqual(worker.cancelled, worker.ran)
        worker.release()

    @defer.inlineCallbacks
    def test_lateResultDoesNotResolveRetry(self):
        worker = ScriptedWorker(hold=True)
        q = self.makeQueue(worker)
        worker.cancelTask = worker.cancelled.append  # cannot abandon it
        yield q.attachWorker(ScriptedWorker(hold=True))
        d = q.call(square, 3, timeout=0.05)
        while len(q.workers()[1].ran) < 1:
            yield _nextTurn()
        worker.release(1)   # the first run's late result
        self.assertNoResult(d)
        q.workers()[1].release(1)
        self.assertEqual((yield d), 9)

    @defer.inlineCallbacks
    def test_cancelWhileWaitingForRetry(self):
        """Cancelling a call whose retry is running cancels the retry: the
        worker is asked to abandon it, and the call fails at once."""
        worker = ScriptedWorker(script=[(b'd', None)], hold=True)
        q = self.makeQueue(worker)
        d = q.call(square, 3)
        while not worker.held:
            yield _nextTurn()
        worker.release(1)
        while len(worker.ran) < 2:
            yield _nextTurn()
        self.assertNoResult(d)
        d.cancel()
        yield self.assertFailure(d, CancelledError)
        self.assertEqual(worker.cancelled, [worker.ran[1]])
        self.assertEqual(q.tasksBeingRetried, [])
        self.assertEqual(worker.held, [])

    def test_waitingCallsAreFewObjects(self):
        """A call waiting in the queue costs the garbage collector a few
        objects (bursts keep thousands waiting, and every full collection
        scans them all): its outcome goes through the queue's ``taskDone``
        without a callback on its Deferred."""
        q = TaskQueue()
        self.addCleanup(q.shutdown)
        gc.collect()
        before = len(gc.get_objects())
        waiting = [q.call(square, n) for n in range(1000)]
        gc.collect()
        perCall = (len(gc.get_objects()) - before) / len(waiting)
        # Task, its Deferred and that one's callback list (the task is its
        # own assignment in the heap, and its Deferred's canceller); and
        # the pure-Python heap's entry tuple.
        self.assertLessEqual(perCall, 3.5 if speedups.COMPILED else 4.5)
        for d in waiting:
            d.addErrback(lambda failure: None)


def _nextTurn():
    d = defer.Deferred()
    reactor.callLater(0.001, d.callback, None)
    return d


class TestCancel(QueueTestCase):

    @defer.inlineCallbacks
    def test_cancelQueuedTask(self):
        worker = ScriptedWorker(hold=True)
        q = self.makeQueue(worker)
        q.call(square, 1)
        d = q.call(square, 2)
        d.cancel()
        yield self.assertFailure(d, CancelledError)
        worker.release()
        self.assertEqual(len(worker.ran), 1)

    @defer.inlineCallbacks
    def test_cancelRunningTaskAsksWorker(self):
        worker = ScriptedWorker(hold=True)
        q = self.makeQueue(worker)
        d = q.call(square, 1)
        d.cancel()
        yield self.assertFailure(d, CancelledError)
        self.assertEqual(worker.cancelled, worker.ran)
        worker.release()

    @defer.inlineCallbacks
    def test_cancelSeriesAndAll(self):
        q = self.makeQueue()
        a = [q.call(square, n, series="a") for n in range(3)]
        b = [q.call(square, n, series="b") for n in range(2)]
        self.assertEqual(len(q.cancelSeries("a")), 3)
        for d in a:
            yield self.assertFailure(d, CancelledError)
        self.assertFalse(any(d.called for d in b))
        self.assertEqual(len(q.cancelAll()), 2)
        for d in b:
            yield self.assertFailure(d, CancelledError)

    @defer.inlineCallbacks
    def test_loadCountAfterCancel(self):
        q = self.makeQueue()
        consumer = RecordingConsumer()
        q.subscribe(consumer)
        ds = [q.call(square, n) for n in range(3)]
        self.assertEqual(consumer.written[-1], 3)
        q.cancelAll()
        self.assertEqual(consumer.written[-1], 0)
        for d in ds:
            yield self.assertFailure(d, CancelledError)


class TestWorkers(QueueTestCase):

    @defer.inlineCallbacks
    def test_attachDetach(self):
        q = self.makeQueue()
        worker = AsyncWorker()
        ID = yield q.attachWorker(worker)
        self.assertIs(q.workers(ID), worker)
        self.assertEqual(q.workers(), [worker])
        self.assertEqual((yield q.detachWorker(worker)), [])
        self.assertEqual(q.workers(), [])
        self.assertEqual((yield q.detachWorker(ID)), [])
        self.assertIsNone(q.workers(ID))

    def test_attachRejectsNonWorker(self):
        q = self.makeQueue()
        self.assertRaises(errors.ImplementationError, q.attachWorker, "x")

    @defer.inlineCallbacks
    def test_detachCrashReassign(self):
        stuck = ScriptedWorker(hold=True)
        q = self.makeQueue(stuck)
        d = q.call(square, 4)
        yield q.attachWorker(AsyncWorker())
        self.assertEqual(
            (yield q.detachWorker(stuck, reassign=True, crash=True)), [])
        self.assertEqual((yield d), 16)

    @defer.inlineCallbacks
    def test_update(self):
        q = self.makeQueue(AsyncWorker(), AsyncWorker())
        self.assertEqual((yield q.update(square, 3)), [9, 9])
        ran = []
        q.update(ran.append, "persistent")
        q.update(ran.append, "once", ephemeral=True)
        yield q.attachWorker(AsyncWorker())
        self.assertEqual(ran.count("persistent"), 3)
        self.assertEqual(ran.count("once"), 2)

    def test_updateRejectsConsumer(self):
        q = self.makeQueue(AsyncWorker())
        self.assertRaises(ValueError, q.update, square, 1,
                          consumer=RecordingConsumer())


class TestShutdown(QueueTestCase):

    @defer.inlineCallbacks
    def test_waitingTasksFailAtShutdown(self):
        q = self.makeQueue()
        d = q.call(square, 1)
        yield q.shutdown()
        yield self.assertFailure(d, errors.QueueRunError)
        self.assertFalse(q.isRunning())

    @defer.inlineCallbacks
    def test_shutdownWithTaskInFlight(self):
        q = self.makeQueue(AsyncWorker())
        gate = defer.Deferred()
        d = q.call(lambda: gate)
        stopping = q.shutdown()
        self.assertFalse(stopping.called)
        gate.callback(5)
        yield stopping
        self.assertEqual((yield d), 5)

    @defer.inlineCallbacks
    def test_shutdownTimeoutCrashesStuckWorker(self):
        q = self.makeQueue(AsyncWorker(), timeout=0.05)
        d = q.call(defer.Deferred)
        yield q.shutdown()
        yield self.assertFailure(d, errors.QueueRunError)


    @defer.inlineCallbacks
    def test_shutdownFromResultCallback(self):
        """Shutting down from a result's callback, while tasks are being
        handed out, errs nowhere; the task it kept from running fails."""
        gate = defer.Deferred()
        q = self.makeQueue(AsyncWorker())
        q.call(lambda: gate)
        first = q.call(square, 2)
        later = q.call(square, 3)
        stopped = []
        first.addCallback(lambda _: stopped.append(q.shutdown()))
        gate.callback(None)
        yield stopped[0]
        yield self.assertFailure(later, errors.QueueRunError)


class TestSubscribeAndIteration(QueueTestCase):

    @defer.inlineCallbacks
    def test_subscribe(self):
        q = self.makeQueue()
        consumer = RecordingConsumer()
        q.subscribe(consumer)
        q.call(square, 1)
        q.call(square, 2)
        self.assertEqual(consumer.written, [1, 2])
        yield q.attachWorker(AsyncWorker())
        self.assertEqual(consumer.written[-1], 0)

    @defer.inlineCallbacks
    def test_iteratorGivesDeferator(self):
        q = self.makeQueue(AsyncWorker())
        dr = yield q.call(lambda: (x * 2 for x in range(5)))
        got = []
        for d in dr:
            got.append((yield d))
        self.assertEqual(got, [0, 2, 4, 6, 8])

    @defer.inlineCallbacks
    def test_iteratorIntoConsumer(self):
        from asynqueue.iteration import ListConsumer
        q = self.makeQueue(AsyncWorker())
        consumer = ListConsumer()
        result = yield q.call(
            lambda: iter(range(4)), consumer=consumer)
        self.assertIs(result, consumer)
        self.assertEqual((yield consumer()), [0, 1, 2, 3])

    @defer.inlineCallbacks
    def test_raw(self):
        q = self.makeQueue(AsyncWorker())
        it = yield q.call(lambda: iter(range(3)), raw=True)
        self.assertEqual(list(it), [0, 1, 2])


class TestVerbose(QueueTestCase):

    @defer.inlineCallbacks
    def test_spewLogsCalls(self):
        q = self.makeQueue(AsyncWorker(), spew=True)
        with capturedLog() as records:
            yield q.call(square, 5)
        self.assertEqual(len(records), 1)
        self.assertIn("square(5) -> 25", records[0].getMessage())
        self.assertEqual(q.info.pastInfo, {})


class TestNullQueue(unittest.TestCase):

    @defer.inlineCallbacks
    def test_nullQueue(self):
        q = NullQueue(returnFailure=True)
        try:
            self.assertEqual(len(q), 1)
            self.assertEqual((yield q.call(square, 9)), 81)
        finally:
            yield q.shutdown()
