"""
Tests of asynqueue.threads, part one: ThreadLooper, ThreadWorker,
ThreadQueue and the module-level deferToThread, through the public API.

Every test checks that no thread it started outlives it. No test depends on
how long anything takes: blocking calls wait on Events the test sets, and
the only time limits are generous bounds on waits that end by themselves.
"""
import itertools
import logging
import os
import random
import subprocess
import sys
import threading

from twisted.internet import defer, reactor
from twisted.internet.interfaces import IConsumer
from twisted.python.threadable import isInIOThread
from twisted.trial import unittest
from zope.interface import implementer

import asynqueue
from asynqueue import errors, threads
from asynqueue.base import TaskQueue
from asynqueue.iteration import Deferator, ListConsumer
from asynqueue.tasks import Task
from support import capturedLog, capturedStderr, collect

#: Seconds a thread that has finished its work gets to disappear, and a
#: gated call to wait for its gate: bounds on waits that end by themselves,
#: never timing assertions.
WAIT_LIMIT = 10.0


class ThreadsTestCase(unittest.TestCase):
    """
    Makes TaskQueues and shuts them down after each test, opens gates for
    blocking calls, and checks that no thread the test started is left.
    (Trial runs cleanups before tearDown, which ends with the check.)
    """

    def setUp(self):
        self.threadsBefore = set(threading.enumerate())
        self.queues = []
        self.gates = []
        self.addCleanup(self.openGates)

    def makeQueue(self, *workers, **kw):
        kw.setdefault("returnFailure", True)
        q = TaskQueue(*workers, **kw)
        self.queues.append(q)
        return q

    def makeThreadQueue(self, **kw):
        kw.setdefault("returnFailure", True)
        q = threads.ThreadQueue(**kw)
        self.queues.append(q)
        return q

    @defer.inlineCallbacks
    def tearDown(self):
        yield defer.gatherResults([q.shutdown() for q in self.queues])
        self.assertNoThreadsLeft()

    def gate(self):
        """A threading.Event for a blocking call to wait on."""
        event = threading.Event()
        self.gates.append(event)
        return event

    def openGates(self):
        for event in self.gates:
            event.set()

    def assertNoThreadsLeft(self):
        """Every thread started since setUp has ended (each is given
        WAIT_LIMIT seconds to go, without needing the reactor)."""
        for thread in set(threading.enumerate()) - self.threadsBefore:
            thread.join(WAIT_LIMIT)
            self.assertFalse(
                thread.is_alive(), "{} outlived the test".format(thread.name))


def blockUntil(gate, result=None):
    """A blocking call: wait for the test to open ``gate``."""
    gate.wait(WAIT_LIMIT)
    return result


def divide(x, y):
    return x / y


def threadName(x=None):
    return threading.current_thread().name


class ThreadCheckingIterator:
    """An iterator over range(N) that records, for each ``next()``,
    whether it ran in the reactor thread."""

    def __init__(self, N):
        self.items = iter(range(N))
        self.inReactor = []

    def __iter__(self):
        return self

    def __next__(self):
        self.inReactor.append(isInIOThread())
        return next(self.items)


@implementer(IConsumer)
class PausingConsumer:
    """Pauses its producer after every write and resumes it on the next
    reactor turn; counts writes made while it had the producer paused."""

    def __init__(self):
        self.producer = None
        self.items = []
        self.paused = False
        self.pauses = 0
        self.writesWhilePaused = 0
        self.call = None

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None
        if self.call is not None and self.call.active():
            self.call.cancel()

    def write(self, data):
        if self.paused:
            self.writesWhilePaused += 1
        self.items.append(data)
        self.paused = True
        self.pauses += 1
        self.producer.pauseProducing()
        self.call = reactor.callLater(0, self.resume)

    def resume(self):
        self.paused = False
        if self.producer is not None:
            self.producer.resumeProducing()


class TestExports(unittest.TestCase):

    def test_exportedWhere09Did(self):
        from asynqueue import workers
        self.assertIs(asynqueue.ThreadQueue, threads.ThreadQueue)
        self.assertIs(asynqueue.ThreadWorker, threads.ThreadWorker)
        self.assertIs(asynqueue.Consumerator, threads.Consumerator)
        self.assertIs(
            asynqueue.OrderedItemProducer, threads.OrderedItemProducer)
        self.assertIs(workers.ThreadWorker, threads.ThreadWorker)
        self.assertIs(threads.TaskQueue, TaskQueue)
        for name in threads.__all__:
            self.assertTrue(hasattr(threads, name), name)


class TestThreadLooper(ThreadsTestCase):

    def setUp(self):
        super().setUp()
        self.t = threads.ThreadLooper()
        self.addCleanup(self.t.stop)

    @defer.inlineCallbacks
    def test_call(self):
        self.assertEqual((yield self.t.call(divide, 10, 2)), (b'r', 5))
        name = yield self.t.call(threadName)
        self.assertEqual(name, (b'r', self.t.thread.name))

    @defer.inlineCallbacks
    def test_errorStatusIsBytes(self):
        status, text = yield self.t.call(divide, 1, 0)
        self.assertEqual(status, b'e')
        self.assertIn("division by zero", text)
        self.assertIn("divide", text)

    @defer.inlineCallbacks
    def test_callsInOrderInOneThread(self):
        ran = []

        def record(k):
            ran.append((k, threading.current_thread()))
            return k
        results = yield defer.gatherResults(
            [self.t.call(record, k) for k in range(20)])
        self.assertEqual(results, [(b'r', k) for k in range(20)])
        self.assertEqual([k for k, _ in ran], list(range(20)))
        self.assertEqual({thread for _, thread in ran}, {self.t.thread})

    @defer.inlineCallbacks
    def test_doNextJumpsAhead(self):
        gate, ran = self.gate(), []
        first = self.t.call(blockUntil, gate)
        calls = [
            self.t.call(ran.append, "a"),
            self.t.call(ran.append, "b"),
            self.t.call(ran.append, "next", doNext=True),
        ]
        gate.set()
        yield first
        yield defer.gatherResults(calls)
        self.assertEqual(ran, ["next", "a", "b"])

    @defer.inlineCallbacks
    def test_raw(self):
        status, result = yield self.t.call(iter, [1, 2], raw=True)
        self.assertEqual(status, b'r')
        self.assertEqual(list(result), [1, 2])
        raw = threads.ThreadLooper(raw=True)
        try:
            status, result = yield raw.call(iter, [3])
            self.assertEqual((status, list(result)), (b'r', [3]))
            status, result = yield raw.call(iter, [4], raw=False)
            self.assertEqual(status, b'i')
            self.assertEqual((yield collect(result)), [4])
        finally:
            yield raw.stop()

    @defer.inlineCallbacks
    def test_iterationNeverInReactorThread(self):
        iterator = ThreadCheckingIterator(6)
        status, dr = yield self.t.call(lambda: iterator)
        self.assertEqual(status, b'i')
        self.assertIsInstance(dr, Deferator)
        self.assertEqual((yield collect(dr)), list(range(6)))
        self.assertEqual(iterator.inReactor, [False] * 7)
        self.assertTrue((yield dr.d))

    @defer.inlineCallbacks
    def test_generatorFunctionAndEmpty(self):
        def generate():
            yield from "abc"
        status, dr = yield self.t.call(lambda: generate)
        self.assertEqual((yield collect(dr)), ["a", "b", "c"])
        self.assertEqual((yield self.t.call(iter, ())), (b'i', []))

    @defer.inlineCallbacks
    def test_iterationInterleavesWithCalls(self):
        status, dr = yield self.t.call(lambda: iter(range(5)))
        dRegular = self.t.call(divide, 3.0, 2.0)
        self.assertEqual((yield collect(dr)), list(range(5)))
        self.assertEqual((yield dRegular), (b'r', 1.5))

    @defer.inlineCallbacks
    def test_deferToThread(self):
        self.assertEqual((yield self.t.deferToThread(divide, 10, 2)), 5)
        error = yield self.assertFailure(
            self.t.deferToThread(divide, 1, 0), errors.ThreadError)
        self.assertIn("division by zero", str(error))
        dr = yield self.t.deferToThread(lambda: iter("xy"))
        self.assertEqual((yield collect(dr)), ["x", "y"])
        it = yield self.t.deferToThread(lambda: iter("z"), raw=True)
        self.assertEqual(list(it), ["z"])

    @defer.inlineCallbacks
    def test_deferToThreadWithConsumer(self):
        consumer = ListConsumer()
        result = yield self.t.deferToThread(
            lambda: iter(range(4)), consumer=consumer)
        self.assertIs(result, consumer)
        self.assertEqual((yield consumer()), [0, 1, 2, 3])
        empty = ListConsumer()
        self.assertIs(
            (yield self.t.deferToThread(iter, (), consumer=empty)), empty)
        self.assertEqual((yield empty()), [])

    @defer.inlineCallbacks
    def test_dr2ip(self):
        status, dr = yield self.t.call(lambda: iter("pq"))
        consumer = ListConsumer()
        self.assertIs((yield self.t.dr2ip(dr, consumer)), consumer)
        self.assertEqual((yield consumer()), ["p", "q"])
        status, dr = yield self.t.call(lambda: iter("r"))
        producer = self.t.dr2ip(dr)
        self.assertIsNone(producer.consumer)
        dr.stop()

    @defer.inlineCallbacks
    def test_lostCallTimesOutWithBytesStatus(self):
        """If a call handed to the thread never arrives, the thread's
        wait times out and the call gets an error status (in bytes)."""
        class QuickLooper(threads.ThreadLooper):
            timeout = 0.01
        looper = QuickLooper()
        inbox = looper._inbox
        inbox.put = lambda item: None   # The hand-off gets lost
        try:
            result = yield looper.call(divide, 1, 1)
        finally:
            del inbox.put
        self.assertEqual(result, (b'e', threads.LOST_CALL_TEXT))
        self.assertEqual((yield looper.call(divide, 4, 2)), (b'r', 2))
        yield looper.stop()

    @defer.inlineCallbacks
    def test_stopEndsThreadWithoutJoiningInReactor(self):
        joins = []
        thread = self.t.thread
        thread.join = lambda *args: joins.append(isInIOThread())
        yield self.t.call(divide, 1, 1)
        triggers = _shutdownTriggers()
        yield self.t.stop()
        self.assertFalse(self.t.threadRunning)
        self.assertNotIn(True, joins)
        self.assertEqual(_shutdownTriggers(), triggers - 1)
        del thread.join
        thread.join(WAIT_LIMIT)
        self.assertFalse(thread.is_alive())
        yield self.t.stop()   # Again: harmless

    @defer.inlineCallbacks
    def test_stopRunsPendingCallsFirst(self):
        gate = self.gate()
        first = self.t.call(blockUntil, gate, "first")
        second = self.t.call(divide, 6, 3)
        stopping = self.t.stop()
        self.assertNoResult(stopping)
        gate.set()
        yield stopping
        self.assertEqual((yield first), (b'r', "first"))
        self.assertEqual((yield second), (b'r', 2))
        status, text = yield self.t.call(divide, 1, 1)
        self.assertEqual(status, b'e')
        self.assertIn("stopped", text)

    @defer.inlineCallbacks
    def test_stopStopsOutstandingDeferators(self):
        status, dr = yield self.t.call(itertools.count)
        self.assertEqual((yield next(dr)), 0)
        self.assertEqual((yield next(dr)), 1)
        yield self.t.stop()
        self.assertFalse((yield dr.d))
        self.assertRaises(StopIteration, next, dr)

    @defer.inlineCallbacks
    def test_stopDuringIteration(self):
        """A fetch in flight when stop is called is still delivered."""
        status, dr = yield self.t.call(itertools.count)
        d = next(dr)
        yield self.t.stop()
        self.assertEqual((yield d), 0)
        self.assertFalse((yield dr.d))


def _shutdownTriggers():
    """How many "before shutdown" triggers the reactor has."""
    event = reactor._eventTriggers.get("shutdown")
    return 0 if event is None else len(event.before)


class TestModuleDeferToThread(ThreadsTestCase):

    def setUp(self):
        super().setUp()
        self.addCleanup(threads.deferToThread)

    @defer.inlineCallbacks
    def test_oneDedicatedThread(self):
        first = yield threads.deferToThread(threadName)
        self.assertEqual((yield threads.deferToThread(threadName)), first)
        self.assertNotEqual(first, threading.current_thread().name)
        yield self.assertFailure(
            threads.deferToThread(divide, 1, 0), errors.ThreadError)

    @defer.inlineCallbacks
    def test_stopThenUseAgain(self):
        self.assertIsNone((yield threads.deferToThread()))
        first = yield threads.deferToThread(threadName)
        yield threads.deferToThread()
        self.assertIsNone((yield threads.deferToThread()))
        second = yield threads.deferToThread(threadName)
        self.assertNotEqual(first, second)

    @defer.inlineCallbacks
    def test_iterationAndConsumer(self):
        iterator = ThreadCheckingIterator(3)
        consumer = ListConsumer()
        result = yield threads.deferToThread(
            lambda: iterator, consumer=consumer)
        self.assertIs(result, consumer)
        self.assertEqual((yield consumer()), [0, 1, 2])
        self.assertNotIn(True, iterator.inReactor)


class TestThreadWorker(ThreadsTestCase):

    @defer.inlineCallbacks
    def test_runsInItsThread(self):
        worker = threads.ThreadWorker()
        q = self.makeQueue(worker)
        self.assertEqual((yield q.call(threadName)), worker.t.thread.name)
        self.assertEqual(worker.cQualified, ["thread", "local"])
        self.assertEqual(worker.iQualified, [])

    @defer.inlineCallbacks
    def test_taskTimersCancelled(self):
        q = self.makeQueue(threads.ThreadWorker())
        self.assertEqual((yield q.call(divide, 8, 2, timeout=30)), 4)
        self.assertEqual(Task.timeoutCalls, [])
        self.assertEqual(
            [call for call in reactor.getDelayedCalls()
             if getattr(call.func, "__name__", None) == "timedout"], [])

    @defer.inlineCallbacks
    def test_priorityOrder(self):
        gate, order = self.gate(), []
        q = self.makeQueue(threads.ThreadWorker())
        first = q.call(blockUntil, gate)
        calls = [
            q.call(order.append, "last", doLast=True),
            q.call(order.append, "nice", niceness=20),
            q.call(order.append, "normal"),
            q.call(order.append, "eager", niceness=-20),
            q.call(order.append, "next", doNext=True),
        ]
        gate.set()
        yield first
        yield defer.gatherResults(calls)
        self.assertEqual(order, ["next", "eager", "normal", "nice", "last"])

    @defer.inlineCallbacks
    def test_series(self):
        plain = threads.ThreadWorker()
        special = threads.ThreadWorker(series=["special"])
        q = self.makeQueue(plain, special)
        names = yield defer.gatherResults(
            [q.call(threadName, series="special") for _ in range(5)])
        self.assertEqual(set(names), {special.t.thread.name})
        self.assertEqual(
            (yield q.call(threadName, series="thread")) in
            (plain.t.thread.name, special.t.thread.name), True)
        self.assertEqual(plain.iQualified, [])

    @defer.inlineCallbacks
    def test_keywordsNeverReachFunction(self):
        q = self.makeQueue(threads.ThreadWorker())

        def keywords(**kw):
            return kw
        kw = yield q.call(
            keywords, a=1, niceness=3, timeout=10, doNext=True,
            returnFailure=True, raw=False)
        self.assertEqual(kw, {"a": 1})

    @defer.inlineCallbacks
    def test_errorsWithReturnFailure(self):
        q = self.makeQueue(threads.ThreadWorker())
        for _ in range(3):
            error = yield self.assertFailure(
                q.call(divide, 1, 0), errors.WorkerError)
            self.assertIn("division by zero", str(error))
        self.assertEqual((yield q.call(divide, 4, 2)), 2)

    @defer.inlineCallbacks
    def test_errorsWithWarn(self):
        q = self.makeQueue(
            threads.ThreadWorker(), returnFailure=False, warn=True)
        with capturedLog() as records:
            text = yield q.call(divide, 1, 0)
        self.assertIn("division by zero", text)
        self.assertEqual(len(records), 1)
        self.assertIsNone(q._dc)

    @defer.inlineCallbacks
    def test_errorsWithDefaultPolicy(self):
        """0.9's default: the text as result, ERROR on stderr and a reactor
        stop scheduled (cancelled here at once)."""
        q = self.makeQueue(threads.ThreadWorker(), returnFailure=False)
        with capturedStderr() as stderr:
            text = yield q.call(divide, 1, 0)
            written = stderr.getvalue()
        self.assertTrue(q._dc.active())
        q._dc.cancel()
        self.assertIn("division by zero", text)
        self.assertIn("ERROR:", written)

    @defer.inlineCallbacks
    def test_iterationGivesDeferator(self):
        iterator = ThreadCheckingIterator(50)
        q = self.makeQueue(threads.ThreadWorker())
        dr = yield q.call(lambda: iterator)
        self.assertIsInstance(dr, Deferator)
        self.assertEqual((yield collect(dr)), list(range(50)))
        self.assertNotIn(True, iterator.inReactor)
        self.assertEqual((yield q.call(iter, [])), [])

    @defer.inlineCallbacks
    def test_iterationIntoConsumer(self):
        q = self.makeQueue(threads.ThreadWorker())
        consumer = ListConsumer()
        result = yield q.call(lambda: iter(range(20)), consumer=consumer)
        self.assertIs(result, consumer)
        self.assertEqual((yield consumer()), list(range(20)))

    @defer.inlineCallbacks
    def test_iterationIntoPausingConsumer(self):
        q = self.makeQueue(threads.ThreadWorker())
        consumer = PausingConsumer()
        yield q.call(lambda: iter(range(10)), consumer=consumer)
        self.assertEqual(consumer.items, list(range(10)))
        self.assertEqual(consumer.pauses, 10)
        self.assertEqual(consumer.writesWhilePaused, 0)

    @defer.inlineCallbacks
    def test_raw(self):
        q = self.makeQueue(threads.ThreadWorker(raw=True))
        it = yield q.call(iter, [1, 2])
        self.assertEqual(list(it), [1, 2])
        dr = yield q.call(iter, [3], raw=False)
        self.assertEqual((yield collect(dr)), [3])

    @defer.inlineCallbacks
    def test_update(self):
        workers = [threads.ThreadWorker() for _ in range(3)]
        q = self.makeQueue(*workers[:2])
        names = yield q.update(threadName)
        self.assertEqual(
            sorted(names), sorted(w.t.thread.name for w in workers[:2]))
        ran = []
        dUpdated = q.update(lambda: ran.append(threadName()))
        yield q.attachWorker(workers[2])
        yield dUpdated
        self.assertEqual(
            sorted(ran), sorted(w.t.thread.name for w in workers))

    @defer.inlineCallbacks
    def test_shutdownWithTasksPending(self):
        gate = self.gate()
        q = self.makeQueue(threads.ThreadWorker())
        running = q.call(blockUntil, gate, "done")
        waiting = [q.call(divide, k, 1) for k in range(3)]
        stopping = q.shutdown()
        self.assertNoResult(stopping)
        gate.set()
        yield stopping
        self.assertEqual((yield running), "done")
        for d in waiting:
            yield self.assertFailure(d, errors.QueueRunError)

    @defer.inlineCallbacks
    def test_shutdownTimeoutCrashesStuckWorker(self):
        gate = self.gate()
        worker = threads.ThreadWorker()
        q = self.makeQueue(worker, timeout=0.01)
        stuck = q.call(blockUntil, gate)
        yield q.shutdown()
        yield self.assertFailure(stuck, errors.QueueRunError)
        gate.set()
        yield worker.stop()
        self.assertFalse(worker.t.threadRunning)

    @defer.inlineCallbacks
    def test_stopAndCrash(self):
        gate = self.gate()
        worker = threads.ThreadWorker()
        task = Task(blockUntil, (gate,), {}, 0, None)
        worker.run(task)
        self.assertEqual(worker.crash(), [task])
        gate.set()
        self.assertEqual((yield task.d), (b'r', None))
        yield worker.stop()
        self.assertEqual(worker.crash(), [])

    @defer.inlineCallbacks
    def test_thousandShortTasksOnFourWorkers(self):
        workers = [threads.ThreadWorker() for _ in range(4)]
        q = self.makeQueue(*workers)

        def task(k):
            return k * k, threadName()
        results = yield defer.gatherResults(
            [q.call(task, k) for k in range(1000)])
        self.assertEqual([r[0] for r in results], [k * k for k in range(1000)])
        used = {r[1] for r in results}
        self.assertTrue(used <= {w.t.thread.name for w in workers})
        self.assertGreater(len(used), 1)

    @defer.inlineCallbacks
    def test_randomCompletionTimes(self):
        """Results match their calls whatever order they finish in."""
        gates = [self.gate() for _ in range(8)]
        workers = [threads.ThreadWorker() for _ in range(4)]
        q = self.makeQueue(*workers)
        calls = [q.call(blockUntil, gates[k], k) for k in range(8)]
        rng = random.Random(1)
        for k in rng.sample(range(8), 8):
            gates[k].set()
        self.assertEqual((yield defer.gatherResults(calls)), list(range(8)))


class TestThreadQueue(ThreadsTestCase):

    @defer.inlineCallbacks
    def test_basic(self):
        for raw in (True, False):
            q = self.makeThreadQueue(raw=raw)
            self.assertEqual((yield q.call(divide, 3, 2)), 1.5)
            self.assertEqual(len(q), 1)

    @defer.inlineCallbacks
    def test_iteration(self):
        q = self.makeThreadQueue()
        dr = yield q.call(lambda: (2 * k for k in range(7)))
        self.assertEqual((yield collect(dr)), [2 * k for k in range(7)])
        raw = self.makeThreadQueue(raw=True)
        it = yield raw.call(lambda: (2 * k for k in range(3)))
        self.assertEqual(list(it), [0, 2, 4])

    @defer.inlineCallbacks
    def test_deferToThreadSkipsQueue(self):
        gate = self.gate()
        q = self.makeThreadQueue()
        self.assertEqual((yield q.deferToThread(threadName)),
                         q.worker.t.thread.name)
        blocked = q.call(blockUntil, gate, "queued")
        direct = q.deferToThread(divide, 9, 3, doNext=True)
        gate.set()
        self.assertEqual((yield direct), 3)
        self.assertEqual((yield blocked), "queued")
        yield self.assertFailure(
            q.deferToThread(divide, 1, 0), errors.ThreadError)

    @defer.inlineCallbacks
    def test_errorPolicies(self):
        q = self.makeThreadQueue()
        yield self.assertFailure(q.call(divide, 1, 0), errors.WorkerError)
        q = self.makeThreadQueue(returnFailure=False, warn=True)
        logger = logging.getLogger("asynqueue")
        handler = logging.Handler()
        handler.emit = lambda record: None
        logger.addHandler(handler)
        try:
            self.assertIn("division", (yield q.call(divide, 1, 0)))
        finally:
            logger.removeHandler(handler)

    @defer.inlineCallbacks
    def test_shutdownEndsThread(self):
        q = self.makeThreadQueue()
        yield q.call(divide, 1, 1)
        yield q.shutdown()
        self.assertFalse(q.worker.t.threadRunning)
        self.assertFalse(q)


EXIT_SCRIPT = """
import sys
from asynqueue import threads
looper = threads.ThreadLooper()
reader = threads.Consumerator()
reader.write("item")
looper.call(list, reader)                  # blocks its thread, waiting
threads.PoolUser.deferToThreadInPool(sum, [1, 2])   # starts the pool
threads.Filerator()
print("exiting")
"""


class TestInterpreterExit(unittest.TestCase):

    def test_noThreadKeepsInterpreterAlive(self):
        """A program that never stops its loopers, blocking iterations or
        pool still exits."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [os.path.dirname(os.path.dirname(threads.__file__))] +
            env.get("PYTHONPATH", "").split(os.pathsep))
        done = subprocess.run(
            [sys.executable, "-c", EXIT_SCRIPT], env=env,
            capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout.strip(), "exiting")
