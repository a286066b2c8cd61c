"""
Tests of remote workers over loopback sockets: calls, errors, big
arguments and results, iteration in batches, concurrency, calls in
threads, lost connections, 0.9 servers, and the WireRunner API of 0.9.
Every test starts and stops its own servers.
"""
import gc
import os
import shutil
import tempfile
import threading

import numpy as np
from twisted.internet import defer, endpoints, protocol, reactor, task
from twisted.protocols import amp
from twisted.trial import unittest

from asynqueue import errors, misc, wire
from asynqueue.base import TaskQueue
from asynqueue.iteration import Deferator, ListConsumer
from asynqueue.util import o2p, p2o
from support import collect, waitUntil  # noqa: F401 (for the wire tests)


class WireTestUniverse(misc.TestUniverse):
    """Methods for the tests: results of any size, errors, iterators and
    calls that wait until the test lets them finish."""

    def __init__(self, wireServer=None):
        super().__init__(wireServer)
        self.held = []
        self.running = 0
        self.mostRunning = 0
        self.cancelled = []
        self.gate = threading.Event()

    def nothing(self):
        return None

    def boom(self, text):
        raise ValueError(text)

    def blob(self, size):
        return os.urandom(64) * (size // 64)

    def array(self, n):
        return np.arange(n, dtype=np.float64)

    def total(self, array):
        return float(array.sum()), array.flags.writeable

    def count(self, n):
        return (x for x in range(n))

    def failing(self, n):
        yield from range(n)
        raise RuntimeError("iterator broke")

    def hold(self, value):
        """A Deferred that fires with ``value`` once the test releases it."""
        d = defer.Deferred()
        self.held.append((d, value))
        self.running += 1
        self.mostRunning = max(self.mostRunning, self.running)
        return d.addBoth(self._done)

    def _done(self, result):
        self.running -= 1
        return result

    def release(self):
        held, self.held = self.held, []
        for d, value in held:
            d.callback(value)
        self.gate.set()

    def untilCancelled(self, name):
        """A Deferred that fires only when cancelled, noting ``name``."""
        self.running += 1
        return defer.Deferred(lambda d: self.cancelled.append(name))

    def gated(self, n):
        """In a thread: wait for the test to open the gate, then return
        an iterator of ``n`` items."""
        self.running += 1
        self.gate.wait(10)
        return iter(range(n))


class WireTestCase(unittest.TestCase):
    """Starts servers on UNIX sockets and queues of WireWorkers; after each
    test shuts the queues down, then stops the servers."""

    timeout = 20

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="aq-wire-")
        self.servers = []
        self.queues = []
        self.workers = []
        self._sockets = 0

    @defer.inlineCallbacks
    def tearDown(self):
        for universe in [s.wwu for s in self.servers]:
            if isinstance(universe, WireTestUniverse):
                universe.release()
        for q in self.queues:
            yield q.shutdown()
        for worker in self.workers:
            yield worker.stop()
        for server in self.servers:
            yield server.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def newSocket(self):
        self._sockets += 1
        return "unix:" + os.path.join(
            self.directory, "s{}.sock".format(self._sockets))

    @defer.inlineCallbacks
    def startServer(self, universe=None, description=None, **kw):
        """D→(server, description) of a server now listening."""
        description = description or self.newSocket()
        server = wire.WireServer(
            description, universe or WireTestUniverse(), **kw)
        self.servers.append(server)
        yield server.start()
        return server, description

    def makeWorker(self, description, **kw):
        worker = wire.WireWorker(WireTestUniverse(), description, **kw)
        self.workers.append(worker)
        return worker

    def makeQueue(self, *workers, **kw):
        kw.setdefault("returnFailure", True)
        q = TaskQueue(*workers, **kw)
        self.queues.append(q)
        return q

    @defer.inlineCallbacks
    def serverAndQueue(self, workerKw=None, **serverKw):
        """D→(queue, universe) with one worker on a new server."""
        server, description = yield self.startServer(**serverKw)
        worker = self.makeWorker(description, **(workerKw or {}))
        yield worker.whenConnected()
        return self.makeQueue(worker), server.wwu


class TestCalls(WireTestCase):

    @defer.inlineCallbacks
    def test_callByName(self):
        q, universe = yield self.serverAndQueue()
        self.assertEqual((yield q.call("add", 1, 2)), 3)
        self.assertEqual((yield q.call("divide", 5.0, y=2)), 2.5)
        self.assertIsNone((yield q.call("nothing")))

    @defer.inlineCallbacks
    def test_callByBoundMethod(self):
        q, universe = yield self.serverAndQueue()
        self.assertEqual((yield q.call(WireTestUniverse().add, 2, 3)), 5)

    @defer.inlineCallbacks
    def test_notAMethodName(self):
        q, universe = yield self.serverAndQueue()
        yield self.assertFailure(q.call(len, "abc"), errors.WorkerError)

    @defer.inlineCallbacks
    def test_remoteErrorNeverResigns(self):
        q, universe = yield self.serverAndQueue()
        for _ in range(3):
            error = yield self.assertFailure(
                q.call("boom", "no good"), errors.WorkerError)
            self.assertIn("no good", str(error))
            self.assertIn("ValueError", str(error))
        self.assertEqual(len(q), 1)
        self.assertEqual((yield q.call("add", 1, 1)), 2)

    @defer.inlineCallbacks
    def test_errorPolicyWarn(self):
        """With 0.9's policy (warn=True) the error text is the result."""
        server, description = yield self.startServer()
        q = self.makeQueue(self.makeWorker(description),
                           returnFailure=False, warn=True)
        result = yield q.call("boom", "quietly")
        self.assertIn("quietly", result)

    @defer.inlineCallbacks
    def test_privateAndFrameworkNamesRefused(self):
        q, universe = yield self.serverAndQueue()
        for name in ("_done", "__class__", "runTask", "check", "getNext"):
            error = yield self.assertFailure(
                q.call(name), errors.WorkerError)
            self.assertIn("not a public method", str(error))
        self.assertEqual((yield q.call("add", 1, 1)), 2)

    @defer.inlineCallbacks
    def test_unpicklableResultIsAnError(self):
        q, universe = yield self.serverAndQueue()
        error = yield self.assertFailure(
            q.call("add", [1], [lambda: None]), errors.WorkerError)
        self.assertIn("pickle", str(error))

    @defer.inlineCallbacks
    def test_bigResults(self):
        """50 MB of bytes and an 8 MB array: past AMP's 64 KiB limit."""
        q, universe = yield self.serverAndQueue()
        blob = yield q.call("blob", 50 << 20)
        self.assertEqual(len(blob), 50 << 20)
        self.assertEqual(blob, blob[:64] * (len(blob) // 64))
        array = yield q.call("array", 1 << 20)
        np.testing.assert_array_equal(array, np.arange(1 << 20))
        self.assertTrue(array.flags.writeable)

    @defer.inlineCallbacks
    def test_bigResultStreamedNotChunked(self):
        """A big result comes with its answer: no GetNext round trips."""
        q, universe = yield self.serverAndQueue()
        calls = []
        self.patch(wire.WireRunner, "getNext",
                   lambda *args: calls.append(args))
        self.assertEqual(len((yield q.call("blob", 1 << 20))), 1 << 20)
        self.assertEqual(calls, [])

    @defer.inlineCallbacks
    def test_bigAndSmallAnswersInterleaved(self):
        """Answers that come while a big payload is being sent wait for it
        and arrive intact, in both directions."""
        q, universe = yield self.serverAndQueue(workerKw={"N_concurrent": 6})
        array = np.arange(1 << 20, dtype=np.float64)
        calls = []
        for k in range(12):
            if k % 3 == 0:
                calls.append(q.call("blob", 4 << 20))
            elif k % 3 == 1:
                calls.append(q.call("total", array))
            else:
                calls.append(q.call("add", k, 1))
        results = yield defer.gatherResults(calls)
        for k, result in enumerate(results):
            if k % 3 == 0:
                self.assertEqual(len(result), 4 << 20)
                self.assertEqual(result, result[:64] * (1 << 16))
            elif k % 3 == 1:
                self.assertEqual(result, (float(array.sum()), True))
            else:
                self.assertEqual(result, k + 1)

    @defer.inlineCallbacks
    def test_bigArguments(self):
        q, universe = yield self.serverAndQueue()
        array = np.ones(1 << 20)
        self.assertEqual(
            (yield q.call("total", array)), (float(1 << 20), True))
        text = "x" * 200000
        self.assertEqual((yield q.call("add", text, "y")), text + "y")

    @defer.inlineCallbacks
    def test_threadedCalls(self):
        q, universe = yield self.serverAndQueue(workerKw={"thread": True})
        self.assertEqual((yield q.call("blockingTask", 3, 0.01)), 6)
        dr = yield q.call("count", 5)
        self.assertEqual((yield collect(dr)), list(range(5)))

    @defer.inlineCallbacks
    def test_perCallThread(self):
        q, universe = yield self.serverAndQueue()
        self.assertEqual(
            (yield q.call("blockingTask", 4, 0.0, thread=True)), 8)


class TestConcurrency(WireTestCase):

    @defer.inlineCallbacks
    def test_oneAtATimeByDefault(self):
        q, universe = yield self.serverAndQueue()
        dList = [q.call("hold", k) for k in range(3)]
        yield waitUntil(lambda: universe.held, "a call to run")
        for k in range(3):
            yield task.deferLater(reactor, 0.02, lambda: None)
            self.assertEqual(len(universe.held), 1)
            universe.release()
            if k < 2:
                yield waitUntil(lambda: universe.held, "the next call")
        self.assertEqual((yield defer.gatherResults(dList)), [0, 1, 2])
        self.assertEqual(universe.mostRunning, 1)

    @defer.inlineCallbacks
    def test_N_concurrent(self):
        q, universe = yield self.serverAndQueue(
            workerKw={"N_concurrent": 3})
        dList = [q.call("hold", k) for k in range(7)]
        yield waitUntil(lambda: len(universe.held) == 3, "3 calls")
        yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(universe.held), 3)
        while not all(d.called for d in dList):
            universe.release()
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.assertEqual((yield defer.gatherResults(dList)), list(range(7)))
        self.assertEqual(universe.mostRunning, 3)

    @defer.inlineCallbacks
    def test_manyTinyCallsPipelined(self):
        q, universe = yield self.serverAndQueue(
            workerKw={"N_concurrent": 8})
        results = yield defer.gatherResults(
            [q.call("add", k, 1) for k in range(500)])
        self.assertEqual(results, list(range(1, 501)))


class TestIteration(WireTestCase):

    def countBatches(self):
        batches = []
        fetch = wire.RemoteIterator.fetchBatch

        def counting(remote):
            batches.append(remote.worker.iterationBatch)
            return fetch(remote)
        self.patch(wire.RemoteIterator, "fetchBatch", counting)
        return batches

    @defer.inlineCallbacks
    def test_deferatorInBatches(self):
        q, universe = yield self.serverAndQueue(
            workerKw={"iterationBatch": 100})
        batches = self.countBatches()
        dr = yield q.call("count", 1000)
        self.assertIsInstance(dr, Deferator)
        self.assertEqual((yield collect(dr)), list(range(1000)))
        self.assertEqual(len(batches), 10)
        self.assertTrue((yield dr.d))
        self.assertEqual(universe.wr.iterators, {})

    @defer.inlineCallbacks
    def test_bytesItems(self):
        q, universe = yield self.serverAndQueue()
        yield q.call("setStuff", 20, 10)
        stuff = yield q.call("getStuff")
        dr = yield q.call("stufferator")
        self.assertEqual((yield collect(dr)), stuff)

    @defer.inlineCallbacks
    def test_bigItems(self):
        q, universe = yield self.serverAndQueue()
        yield q.call("setStuff", 40, 100000)
        dr = yield q.call("stufferator")
        items = yield collect(dr)
        self.assertEqual(len(items), 40)
        self.assertEqual(items[0], b"abcdefghijklmnopqrst" * 5000)

    @defer.inlineCallbacks
    def test_consumer(self):
        q, universe = yield self.serverAndQueue()
        consumer = ListConsumer()
        result = yield q.call("count", 30, consumer=consumer)
        self.assertIs(result, consumer)
        self.assertEqual((yield consumer()), list(range(30)))

    @defer.inlineCallbacks
    def test_emptyIterator(self):
        q, universe = yield self.serverAndQueue()
        self.assertEqual((yield q.call("count", 0)), [])

    @defer.inlineCallbacks
    def test_failingIteratorEndsAfterItsItems(self):
        q, universe = yield self.serverAndQueue()
        dr = yield q.call("failing", 5)
        self.assertEqual((yield collect(dr)), list(range(5)))
        self.assertEqual(universe.wr.iterators, {})

    @defer.inlineCallbacks
    def test_stoppedDeferatorExpiresOnServer(self):
        q, universe = yield self.serverAndQueue(
            workerKw={"iterationBatch": 10})
        dr = yield q.call("count", 1000)
        self.assertEqual((yield next(dr)), 0)
        self.assertEqual(len(universe.wr.iterators), 1)
        dr.stop()
        yield waitUntil(lambda: not universe.wr.iterators,
                        "the server to drop the iterator")

    @defer.inlineCallbacks
    def test_droppedDeferatorExpiresOnServer(self):
        q, universe = yield self.serverAndQueue(
            workerKw={"iterationBatch": 10})
        dr = yield q.call("count", 1000)
        del dr
        gc.collect()
        yield waitUntil(lambda: not universe.wr.iterators,
                        "the server to drop the iterator")

    @defer.inlineCallbacks
    def test_disconnectExpiresIterators(self):
        q, universe = yield self.serverAndQueue(
            workerKw={"iterationBatch": 10})
        dr = yield q.call("count", 1000)
        self.assertEqual(len(universe.wr.iterators), 1)
        yield q.shutdown()
        yield waitUntil(lambda: not universe.wr.iterators,
                        "the server to drop the iterator")
        dr.stop()


class TestLostConnections(WireTestCase):

    @defer.inlineCallbacks
    def test_lostMidCallRunsElsewhere(self):
        """The server goes away mid-call: the worker resigns and the call
        runs again on another worker."""
        q, universe = yield self.serverAndQueue()
        first = q.workers()[0]
        d = q.call("hold", "done")
        yield waitUntil(lambda: universe.held, "the call to run")
        yield self.servers[0].factory.dropAll()
        universe.release()  # Too late: its answer goes nowhere.
        yield waitUntil(lambda: first not in q.workers(), "resignation")
        server, description = yield self.startServer()
        q.attachWorker(self.makeWorker(description))
        yield waitUntil(lambda: server.wwu.held, "the retried call")
        server.wwu.release()
        self.assertEqual((yield d), "done")

    @defer.inlineCallbacks
    def test_callThatLosesTwoWorkersFails(self):
        q, universe = yield self.serverAndQueue()
        d = q.call("hold", None)
        for attempt in range(2):
            server = self.servers[-1]
            yield waitUntil(lambda: server.wwu.held, "the call to run")
            yield server.factory.dropAll()
            if attempt == 0:
                server, description = yield self.startServer()
                q.attachWorker(self.makeWorker(description))
        error = yield self.assertFailure(d, errors.WorkerError)
        self.assertIn("twice", str(error))

    @defer.inlineCallbacks
    def test_connectionRefusedResigns(self):
        description = self.newSocket()
        worker = self.makeWorker(description)
        q = self.makeQueue(worker)
        yield self.assertFailure(worker.whenConnected(), Exception)
        yield waitUntil(lambda: len(q) == 0, "resignation")

    @defer.inlineCallbacks
    def test_callsWaitForTheConnection(self):
        server, description = yield self.startServer()
        q = self.makeQueue(self.makeWorker(description, N_concurrent=2))
        results = yield defer.gatherResults(
            [q.call("add", k, k) for k in range(5)])
        self.assertEqual(results, [0, 2, 4, 6, 8])

    @defer.inlineCallbacks
    def test_stopWaitsForCallsInFlight(self):
        q, universe = yield self.serverAndQueue()
        worker = q.workers()[0]
        d = q.call("hold", 7)
        yield waitUntil(lambda: universe.held, "the call")
        dStop = worker.stop()
        self.assertFalse(dStop.called)
        universe.release()
        self.assertEqual((yield d), 7)
        yield dStop


class LegacyServer:
    """An AsynQueue 0.9 style server: a plain ``amp.AMP(locator=wwu)``."""

    def __init__(self, description, universe):
        self.universe = universe
        factory = protocol.Factory()
        factory.protocol = lambda: amp.AMP(locator=universe)
        self.endpoint = endpoints.serverFromString(reactor, description)
        self.factory = factory

    @defer.inlineCallbacks
    def start(self):
        self.port = yield self.endpoint.listen(self.factory)


class TestLegacyServer(WireTestCase):
    """A WireWorker still works with a server that speaks only 0.9's
    RunTask and GetNext (no key)."""

    @defer.inlineCallbacks
    def setUp(self):
        WireTestCase.setUp(self)
        description = self.newSocket()
        self.legacy = LegacyServer(description, WireTestUniverse())
        yield self.legacy.start()
        worker = self.makeWorker(description)
        yield worker.whenConnected()
        self.q = self.makeQueue(worker)
        self.addCleanup(lambda: self.legacy.port.stopListening())

    @defer.inlineCallbacks
    def test_calls(self):
        self.assertEqual((yield self.q.call("add", 1, 2)), 3)
        yield self.assertFailure(self.q.call("boom", "x"), errors.WorkerError)

    @defer.inlineCallbacks
    def test_chunkedResult(self):
        blob = yield self.q.call("blob", 200000)
        self.assertEqual(len(blob), 200000)

    @defer.inlineCallbacks
    def test_09WorkerMethods(self):
        """0.9's do_next and assembleChunkedResult, on IDs the server's
        runner holds."""
        worker = self.q.workers()[0]
        runner = self.legacy.universe.wr
        ID = runner.keep(iter([b"raw", {"a": 1}]))
        self.assertEqual((yield worker.do_next(ID)), b"raw")
        self.assertEqual((yield worker.do_next(ID)), {"a": 1})
        yield self.assertFailure(worker.do_next(ID), StopIteration)
        ID = runner.keep(wire.ChunkyString(o2p(list(range(30000)))))
        self.assertEqual((yield worker.assembleChunkedResult(ID)),
                         list(range(30000)))

    @defer.inlineCallbacks
    def test_iteration(self):
        dr = yield self.q.call("count", 7)
        self.assertEqual((yield collect(dr)), list(range(7)))
        self.assertEqual((yield self.q.call("count", 0)), [])


class TestChunkyString(unittest.TestCase):

    def test_chunks(self):
        x = b"0123456789" * 11111
        cs = wire.ChunkyString(x)
        cs.chunkSize = 1234
        chunks = list(cs)
        self.assertTrue(all(len(chunk) <= 1234 for chunk in chunks))
        self.assertEqual(b"".join(chunks), x)
        self.assertFalse(hasattr(cs, "bigString"))


class TestWireRunner(unittest.TestCase):
    """The server-side runner, as 0.9's tests used it."""

    def setUp(self):
        self.wr = wire.WireRunner()
        self.tm = misc.TestMethods()

    def tearDown(self):
        return self.wr.shutdown()

    @defer.inlineCallbacks
    def test_call(self):
        response = yield self.wr.call(self.tm.divide, 5.0, 2)
        self.assertEqual(response, {'status': b'r', 'result': o2p(2.5)})

    @defer.inlineCallbacks
    def test_callError(self):
        response = yield self.wr.call(self.tm.divide, 1.0, 0)
        self.assertEqual(response['status'], b'e')
        self.assertIn("division", response['result'])

    @defer.inlineCallbacks
    def test_chunked(self):
        self.tm.setStuff(10, 100000)
        response = yield self.wr.call(self.tm.getStuff)
        self.assertEqual(response['status'], b'c')
        chunks = []
        while True:
            reply = yield self.wr.getNext(response['result'])
            if not reply['isValid']:
                self.assertEqual(reply['value'], b"")
                break
            self.assertTrue(reply['isRaw'])
            chunks.append(reply['value'])
        self.assertEqual(p2o(b"".join(chunks)), self.tm.getStuff())
        self.assertEqual(self.wr.iterators, {})

    @defer.inlineCallbacks
    def test_iterator(self):
        self.tm.setStuff(5, 10)
        response = yield self.wr.call(self.tm.stufferator)
        self.assertEqual(response['status'], b'i')
        ID = response['result']
        self.assertEqual(type(self.wr.iterators[ID]),
                         type(self.tm.stufferator()))
        for k in range(6):
            reply = yield self.wr.getNext(ID)
            self.assertEqual(reply['isValid'], k < 5)
        reply = yield self.wr.getNext(b"no such ID")
        self.assertFalse(reply['isValid'])

    @defer.inlineCallbacks
    def test_shutdownWaitsForCalls(self):
        results = []
        d = defer.Deferred()
        self.wr.call(lambda: d).addCallback(results.append)
        dShutdown = self.wr.shutdown()
        self.assertFalse(dShutdown.called)
        d.callback(1)
        yield dShutdown
        self.assertEqual(results, [{'status': b'r', 'result': o2p(1)}])


class TestCancelling(WireTestCase):
    """A call given up on (cancelled, timed out, or its client gone) stops
    on the server when it can, and its slot comes back."""

    @defer.inlineCallbacks
    def cancelWhenRunning(self, d, running):
        """Cancel call ``d`` once ``running()``; it fails CancelledError."""
        yield waitUntil(running, "the call to run")
        d.cancel()
        yield self.assertFailure(d, defer.CancelledError)

    @defer.inlineCallbacks
    def nextCallWaits(self, q):
        """D→the Deferred of a call of 2 + 3 that, 50 ms on, still waits
        for the worker's one slot."""
        dNext = q.call("add", 2, 3)
        yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertFalse(dNext.called)
        return dNext

    @defer.inlineCallbacks
    def test_cancelledCallIsCancelledOnTheServer(self):
        q, universe = yield self.serverAndQueue()
        d = q.call("untilCancelled", "first")
        yield self.cancelWhenRunning(d, lambda: universe.running)
        yield waitUntil(lambda: universe.cancelled, "the server to cancel")
        self.assertEqual(universe.cancelled, ["first"])
        # One slot (N_concurrent=1), and it is free again.
        self.assertEqual((yield q.call("add", 1, 2)), 3)

    @defer.inlineCallbacks
    def test_timedOutCallIsCancelledOnTheServer(self):
        q, universe = yield self.serverAndQueue()
        d = q.call("untilCancelled", "slow", timeout=0.1)
        error = yield self.assertFailure(d, errors.TimeoutError)
        self.assertIn("two tries", str(error))
        # Timed out, abandoned and retried once: both runs were cancelled.
        yield waitUntil(lambda: len(universe.cancelled) == 2, "cancels")
        self.assertEqual(universe.cancelled, ["slow", "slow"])
        self.assertEqual((yield q.call("add", 2, 2)), 4)

    @defer.inlineCallbacks
    def test_callNotYetSentIsWithdrawn(self):
        server, description = yield self.startServer()
        worker = self.makeWorker(description, N_concurrent=2)
        q = self.makeQueue(worker)
        # Still connecting: both calls wait in the worker.
        dHold = q.call("hold", "never")
        dAdd = q.call("add", 1, 1)
        self.assertEqual(len(worker.tasks), 2)
        dHold.cancel()
        yield self.assertFailure(dHold, defer.CancelledError)
        self.assertEqual((yield dAdd), 2)
        self.assertEqual(server.wwu.mostRunning, 0)
        self.assertEqual(worker.tasks, [])

    @defer.inlineCallbacks
    def test_callInAServerThreadRunsOnHoldingItsSlot(self):
        q, universe = yield self.serverAndQueue(workerKw={"thread": True})
        d = q.call("gated", 3)
        yield self.cancelWhenRunning(d, lambda: universe.running)
        dNext = yield self.nextCallWaits(q)
        self.assertEqual(universe.cancelled, [])
        universe.gate.set()
        self.assertEqual((yield dNext), 5)
        # The iterator its answer left on the server was dropped.
        yield waitUntil(lambda: not universe.wr.iterators, "the drop")

    @defer.inlineCallbacks
    def test_lostClientsCallsAreCancelled(self):
        q, universe = yield self.serverAndQueue()
        d = q.call("untilCancelled", "orphan")
        yield waitUntil(lambda: universe.running, "the call to run")
        yield self.servers[0].factory.dropAll()
        yield waitUntil(lambda: universe.cancelled, "the server to cancel")
        self.assertEqual(universe.cancelled, ["orphan"])
        # The worker resigned and the call waits for another one.
        self.assertFalse(d.called)
        d.cancel()
        yield self.assertFailure(d, defer.CancelledError)

    @defer.inlineCallbacks
    def assertCancelledCallRunsOn(self, q, universe):
        """Cancel a running call of ``hold``: it runs on, holding the one
        slot, until the test releases it."""
        d = q.call("hold", "on")
        yield self.cancelWhenRunning(d, lambda: universe.held)
        dNext = yield self.nextCallWaits(q)
        universe.release()
        self.assertEqual((yield dNext), 5)

    @defer.inlineCallbacks
    def test_universeMayKeepItsCallsRunning(self):
        universe = WireTestUniverse()
        universe.cancelAbandoned = False
        q, universe = yield self.serverAndQueue(universe=universe)
        yield self.assertCancelledCallRunsOn(q, universe)

    @defer.inlineCallbacks
    def test_serverOfProtocolVersion1LetsTheCallFinish(self):
        from asynqueue import wireserver
        self.patch(wireserver, "PROTOCOL_VERSION", 1)
        q, universe = yield self.serverAndQueue()
        # No CancelTask goes out.
        yield self.assertCancelledCallRunsOn(q, universe)

    @defer.inlineCallbacks
    def test_cancellingStopsTheProcessBehindTheCall(self):
        """A server method that hands its work to a ProcessQueue: the
        client's cancel reaches that queue, whose worker kills the child
        running it and starts another."""
        universe = ProcessBackedUniverse()
        try:
            q, universe = yield self.serverAndQueue(universe=universe)
            before = yield q.call("childPid")
            d = q.call("sleepInChild", 60)
            yield task.deferLater(reactor, 0.2, lambda: None)
            d.cancel()
            yield self.assertFailure(d, defer.CancelledError)
            after = yield q.call("childPid")
            self.assertNotEqual(after, before)
        finally:
            yield universe.pq.shutdown()


class ProcessBackedUniverse(WireTestUniverse):
    """A universe whose methods run their work in a ProcessQueue."""

    def __init__(self, wireServer=None):
        from asynqueue.process import ProcessQueue
        super().__init__(wireServer)
        self.pq = ProcessQueue(1, returnFailure=True)

    def sleepInChild(self, seconds):
        import time
        return self.pq.call(time.sleep, seconds)

    def childPid(self):
        return self.pq.call(os.getpid)
