"""
Tests of DaskWorker: 0.9-style TaskQueue code run on a dask.distributed
LocalCluster of two worker processes with one thread each (started once
for the module, and checked at the end to leave no process or thread),
plus a cluster of its own for the test that takes it away mid-call.
Skipped when dask.distributed is not installed.
"""
import os
import signal
import sys
import threading
import time
from multiprocessing import resource_tracker

import numpy as np
import pytest
from twisted.internet import defer, reactor, task, threads
from twisted.internet.defer import CancelledError
from twisted.trial import unittest

distributed = pytest.importorskip(
    "distributed", reason="dask.distributed is not installed (pip install "
    "'asynqueue[dask]'); the DaskWorker tests need a LocalCluster")

import asynqueue  # noqa: E402
from asynqueue import dask as aqdask  # noqa: E402
from asynqueue import errors  # noqa: E402
from asynqueue.base import TaskQueue  # noqa: E402
from asynqueue.dask import DaskWorker  # noqa: E402
from asynqueue.iteration import Deferator  # noqa: E402
from asynqueue.workers import AsyncWorker  # noqa: E402

import daskfuncs  # noqa: E402
from proccase import childPIDs, collect, waitUntil  # noqa: E402
from support import capturedStderr  # noqa: E402

#: Threads that dask.distributed keeps for the life of the process once
#: used (module-level executors it never shuts down); not ours to end.
DISTRIBUTED_POOL_THREADS = ("Dask-Offload", "TCP-Executor")
#: The cluster of the module, its (synchronous) client, and the threads
#: that ran before it started.
_fixture = {}


def newCluster(n_workers):
    return distributed.LocalCluster(
        n_workers=n_workers, processes=True, threads_per_worker=1,
        dashboard_address=":0")


def setUpModule():
    _fixture["threads"] = set(threading.enumerate())
    _fixture["tracker"] = resource_tracker._resource_tracker._fd is not None
    _fixture["cluster"] = newCluster(2)
    _fixture["client"] = distributed.Client(
        _fixture["cluster"], set_as_default=False)
    _fixture["client"].wait_for_workers(2)


def tearDownModule():
    """Stop the cluster; then no child process of ours, nor any thread but
    distributed's own pools, may be left."""
    _fixture.pop("client").close()
    _fixture.pop("cluster").close()
    if not _fixture["tracker"]:
        # The cluster's worker processes made multiprocessing start its
        # resource tracker, a child process that would outlive us.
        resource_tracker._resource_tracker._stop()
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and (childPIDs() or _newThreads()):
        time.sleep(0.05)
    assert childPIDs() == [], "processes left behind: {}".format(
        [_commandLine(pid) for pid in childPIDs()])
    assert _newThreads() == [], "threads left behind: {}".format(
        _newThreads())


def _commandLine(pid):
    try:
        with open("/proc/{}/cmdline".format(pid), "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode()
    except OSError:
        return str(pid)


def _newThreads():
    return [thread.name for thread in threading.enumerate()
            if thread not in _fixture["threads"] and thread.is_alive() and
            not thread.name.startswith(DISTRIBUTED_POOL_THREADS)]


def client():
    return _fixture["client"]


def busyThreads():
    """How many calls the module's cluster is running now."""
    return sum(client().run(daskfuncs.busyThreads).values())


def knownKeys(prefix):
    """The scheduler's keys that start with ``prefix``."""
    return [key for key in client().run_on_scheduler(daskfuncs.schedulerKeys)
            if key.startswith(prefix)]


class DaskTestCase(unittest.TestCase):
    """Makes TaskQueues with a DaskWorker on the module's cluster; after
    each test shuts them down and checks that each worker closed its
    client and ended its thread."""

    timeout = 30

    def setUp(self):
        self.queues = []
        self.daskWorkers = []

    @defer.inlineCallbacks
    def makeQueue(self, target=None, **kw):
        """D→(TaskQueue, DaskWorker) once the worker is connected; ``kw``
        goes to the queue, except ``capacity`` and ``iterationBatch``."""
        options = {name: kw.pop(name) for name in
                   ("capacity", "iterationBatch") if name in kw}
        kw.setdefault("returnFailure", True)
        worker = DaskWorker(
            _fixture["cluster"].scheduler_address if target is None
            else target, **options)
        q = TaskQueue(worker, **kw)
        self.queues.append(q)
        self.daskWorkers.append(worker)
        yield worker.whenConnected()
        return q, worker

    @defer.inlineCallbacks
    def tearDown(self):
        yield defer.gatherResults([q.shutdown() for q in self.queues])
        yield defer.gatherResults(
            [worker.whenClosed() for worker in self.daskWorkers])
        for worker in self.daskWorkers:
            self.assertFalse(worker._thread.is_alive())
            if worker.client is not None:
                self.assertEqual(worker.client.status, "closed")

    def waitForIdleCluster(self):
        """Calls abandoned on the cluster finish their sleep there."""
        return waitUntil(lambda: busyThreads() == 0, "an idle cluster")


class TestCalls(DaskTestCase):

    @defer.inlineCallbacks
    def test_callsRunOnTheCluster(self):
        q, worker = yield self.makeQueue()
        results = yield defer.gatherResults(
            [q.call(daskfuncs.inc, x) for x in range(20)])
        self.assertEqual(results, list(range(1, 21)))
        pids = yield q.call(daskfuncs.pid)
        self.assertIn(pids, client().run(daskfuncs.pid).values())
        self.assertEqual(worker.cQualified, ['dask', 'remote'])

    @defer.inlineCallbacks
    def test_givenClientIsUsedAndLeftOpen(self):
        q, worker = yield self.makeQueue(client())
        self.assertIs(asynqueue.DaskWorker, DaskWorker)
        self.assertEqual((yield q.call(daskfuncs.inc, 1)), 2)
        yield q.shutdown()
        self.assertEqual(worker.client.status, "closed")
        self.assertEqual(client().status, "running")

    def test_missingDistributedSaysHowToInstall(self):
        self.addCleanup(sys.modules.__setitem__, "distributed", distributed)
        sys.modules["distributed"] = None
        error = self.assertRaises(ImportError, DaskWorker, "tcp://x:1")
        self.assertIn("pip install 'asynqueue[dask]'", str(error))

    def test_badArguments(self):
        self.assertRaises(TypeError, DaskWorker, 8786)
        self.assertRaises(ValueError, DaskWorker, "tcp://x:1", capacity=0)

    @defer.inlineCallbacks
    def test_queueKeywordsNeverReachTheFunction(self):
        q, worker = yield self.makeQueue()
        result = yield q.call(daskfuncs.inc, 1, niceness=3, doNext=True,
                              series="dask", timeout=10)
        self.assertEqual(result, 2)

    @defer.inlineCallbacks
    def test_numpyArgumentsResultsAndScatter(self):
        q, worker = yield self.makeQueue()
        array = np.arange(1 << 20, dtype=np.float64)
        self.assertEqual((yield q.call(daskfuncs.total, array)),
                         float(array.sum()))
        twice = yield q.call(daskfuncs.doubled, array)
        np.testing.assert_array_equal(twice, array * 2)
        scattered = yield worker.scatter(array)
        self.assertIsInstance(scattered, distributed.Future)
        results = yield defer.gatherResults(
            [q.call(daskfuncs.total, scattered, extra=scattered)
             for _ in range(3)])
        self.assertEqual(results, [2 * float(array.sum())] * 3)

    @defer.inlineCallbacks
    def test_futuresOfAnotherClientAndLambdas(self):
        """A future the user's own client scattered can be an argument
        (nested too), and a lambda goes by value."""
        q, worker = yield self.makeQueue()
        array = np.ones(1000)
        theirs = yield threads.deferToThread(client().scatter, array)
        self.assertEqual((yield q.call(daskfuncs.total, theirs,
                                       extra=theirs)), 2000.0)
        self.assertEqual((yield q.call(lambda arrays: len(arrays),
                                       [theirs, theirs])), 2)
        self.assertEqual((yield q.call(lambda x: x * 3, 5)), 15)


class TestOrderAndCapacity(DaskTestCase):

    @defer.inlineCallbacks
    def test_capacityKeepsBothWorkersBusy(self):
        """As many calls run at once as the cluster has threads (two),
        on both Dask workers, and never more."""
        q, worker = yield self.makeQueue()
        self.assertEqual(worker.taskLimit, 2)
        runs = yield defer.gatherResults(
            [q.call(daskfuncs.ranFor, 0.4, x) for x in range(6)])
        self.assertEqual(len({pid for _, pid, _, _ in runs}), 2)
        for _, _, start, end in runs:
            running = [run for run in runs
                       if run[2] <= start + 0.05 and run[3] > start + 0.05]
            self.assertLessEqual(len(running), 2)
        first, second = sorted(runs, key=lambda run: run[2])[:2]
        self.assertLess(second[2], first[3])

    @defer.inlineCallbacks
    def test_explicitCapacity(self):
        q, worker = yield self.makeQueue(capacity=1)
        self.assertEqual(worker.taskLimit, 1)
        runs = yield defer.gatherResults(
            [q.call(daskfuncs.ranFor, 0.2, x) for x in range(3)])
        ordered = sorted(runs, key=lambda run: run[2])
        for before, after in zip(ordered, ordered[1:]):
            self.assertGreaterEqual(after[2], before[3])

    @defer.inlineCallbacks
    def test_prioritiesDecideDispatch(self):
        """With the cluster busy, waiting calls go out in the queue's order:
        doNext first, then by niceness, first come first served."""
        q, worker = yield self.makeQueue()
        dispatched = []
        run = worker.run

        def recordingRun(task):
            dispatched.append(task.callTuple[1][1])
            return run(task)
        worker.run = recordingRun
        blockers = [q.call(daskfuncs.ranFor, 0.5, "blocker")
                    for _ in range(2)]
        dList = [
            q.call(daskfuncs.ranFor, 0, "late", niceness=20),
            q.call(daskfuncs.ranFor, 0, "normal"),
            q.call(daskfuncs.ranFor, 0, "nice", niceness=-5),
            q.call(daskfuncs.ranFor, 0, "normal too"),
            q.call(daskfuncs.ranFor, 0, "urgent", doNext=True),
        ]
        yield defer.gatherResults(blockers + dList)
        self.assertEqual(dispatched, [
            "blocker", "blocker", "urgent", "nice", "normal", "normal too",
            "late"])

    @defer.inlineCallbacks
    def test_backlogFollowsHowLongCallsTake(self):
        """By default, once short calls have come back, BACKLOG_CALLS calls
        per cluster thread wait on the cluster besides those running;
        once calls take longer than BACKLOG_SECONDS, none does."""
        q, worker = yield self.makeQueue()
        self.assertEqual((worker.backlog, worker.taskLimit), (0, 2))
        yield defer.gatherResults([q.call(daskfuncs.inc, x)
                                   for x in range(4)])
        self.assertEqual(worker.backlog, aqdask.BACKLOG_CALLS)
        self.assertEqual(worker.taskLimit, 2 * (1 + aqdask.BACKLOG_CALLS))
        blockers = [q.call(daskfuncs.ranFor, 0.5, "blocker")
                    for _ in range(2)]
        yield waitUntil(lambda: busyThreads() == 2, "the blockers to run")
        dList = [q.call(daskfuncs.pid) for _ in range(20)]
        yield waitUntil(lambda: len(knownKeys("pid-")) == 20,
                        "all 20 calls on the cluster, behind the blockers")
        yield defer.gatherResults(blockers + dList)
        yield defer.gatherResults([q.call(daskfuncs.ranFor, 0.2)
                                   for _ in range(4)])
        self.assertEqual((worker.backlog, worker.taskLimit), (0, 2))

    @defer.inlineCallbacks
    def test_prioritiesHoldOnTheCluster(self):
        """Calls waiting on the cluster run in the queue's order, each with
        its own priority, whether they were sent together (one graph) or
        one after another: behind two blockers, calls sent against that
        order run in it on each Dask worker."""
        q, worker = yield self.makeQueue(capacity=16)
        priorities = {}
        run = worker.run

        def recordingRun(queued):
            priorities[queued.callTuple[1][1]] = queued.priority
            return run(queued)
        worker.run = recordingRun
        dList = [q.call(daskfuncs.ranFor, 0.8, "blocker{}".format(n))
                 for n in range(2)]
        yield waitUntil(lambda: busyThreads() == 2, "the blockers to run")
        # Each Dask worker may take one call beyond the one it runs, the
        # first that comes: two that would go first anyway.
        dList += [q.call(daskfuncs.ranFor, 0, "first{}".format(n),
                         doNext=True) for n in range(2)]
        for label, niceness in (("late", 15), ("normal", 0), ("nice", -5)):
            yield task.deferLater(reactor, 0.05, lambda: None)
            dList.append(q.call(daskfuncs.ranFor, 0, label,
                                niceness=niceness))
        yield task.deferLater(reactor, 0.05, lambda: None)
        dList += [q.call(daskfuncs.ranFor, 0, label, niceness=niceness)
                  for label, niceness in (("later", 12), ("nicer", -10))]
        runs = yield defer.gatherResults(dList)
        runs.sort(key=lambda labelPidStartEnd: labelPidStartEnd[2])
        for pid in {pid for _, pid, _, _ in runs}:
            labels = [label for label, where, _, _ in runs
                      if where == pid and not label.startswith("blocker")]
            self.assertEqual(labels, sorted(labels, key=priorities.get))

    @defer.inlineCallbacks
    def test_callsGoToTheClusterInBatches(self):
        """A burst of calls goes to the loop thread, and to the scheduler
        as one graph, a batch at a time: all the slots at first, then a
        quarter of them or more each time."""
        q, worker = yield self.makeQueue()
        yield q.call(daskfuncs.inc, 0)
        batches = []
        submitAll = worker._submitAll

        def recordingSubmitAll(calls):
            batches.append(len(calls))
            return submitAll(calls)
        worker._submitAll = recordingSubmitAll
        results = yield defer.gatherResults(
            [q.call(daskfuncs.inc, x) for x in range(200)])
        self.assertEqual(results, list(range(1, 201)))
        self.assertEqual(sum(batches), 200)
        self.assertEqual(batches[0], worker.taskLimit)
        self.assertGreaterEqual(min(batches[:-1]), worker.taskLimit // 4)

    @defer.inlineCallbacks
    def test_shortCallComesBackWhileOthersRun(self):
        """Results are fetched several at a time, but a call that finishes
        among calls that take long comes back at once (FETCH_DELAY)."""
        q, worker = yield self.makeQueue(capacity=16)
        started = time.monotonic()
        first = q.call(daskfuncs.ranFor, 1.0)
        short = q.call(daskfuncs.ranFor, 0)
        others = [q.call(daskfuncs.ranFor, 1.0) for _ in range(4)]
        yield short
        self.assertLess(time.monotonic() - started, 0.6)
        yield defer.gatherResults([first] + others)

    @defer.inlineCallbacks
    def test_callByCallWithoutTaskSpec(self):
        """With a Dask older than its task spec, calls go one by one
        (Client.submit), with the same outcomes."""
        q, worker = yield self.makeQueue(capacity=8)
        worker._graphs = None
        results = yield defer.gatherResults(
            [q.call(daskfuncs.inc, x) for x in range(20)])
        self.assertEqual(results, list(range(1, 21)))
        scattered = yield worker.scatter(np.ones(10))
        self.assertEqual((yield q.call(daskfuncs.total, scattered)), 10.0)
        yield self.assertFailure(q.call(daskfuncs.fail, "no"),
                                 errors.WorkerError)


class TestErrors(DaskTestCase):

    @defer.inlineCallbacks
    def test_returnFailureGivesWorkerErrorWithRemoteTraceback(self):
        q, worker = yield self.makeQueue()
        try:
            yield q.call(daskfuncs.fail, "boom")
        except errors.WorkerError as error:
            text = str(error)
        else:
            self.fail("no WorkerError")
        for phrase in ("ValueError", "boom", "Traceback", "daskfuncs.py",
                       "fail('boom')"):
            self.assertIn(phrase, text)
        self.assertEqual((yield q.call(daskfuncs.inc, 1)), 2)

    @defer.inlineCallbacks
    def test_defaultPolicyReturnsTextAndSchedulesStop(self):
        q, worker = yield self.makeQueue(returnFailure=False)
        with capturedStderr() as stderr:
            result = yield q.call(daskfuncs.fail, "oops")
        self.assertIsInstance(result, str)
        self.assertIn("ValueError: oops", result)
        self.assertIn("ERROR: ", stderr.getvalue())
        self.assertTrue(q._dc.active())
        yield q.shutdown()
        self.assertFalse(q._dc.active())

    @defer.inlineCallbacks
    def test_unpicklableArgumentIsAnError(self):
        q, worker = yield self.makeQueue()
        d = q.call(daskfuncs.inc, threading.Lock())
        yield self.assertFailure(d, errors.WorkerError)
        self.assertEqual((yield q.call(daskfuncs.inc, 1)), 2)

    @defer.inlineCallbacks
    def test_badArgumentFailsOnlyItsOwnCall(self):
        """Of calls sent together, one that cannot be sent fails alone."""
        q, worker = yield self.makeQueue(capacity=8)
        outcomes = yield defer.DeferredList(
            [q.call(daskfuncs.inc, 1), q.call(daskfuncs.inc, threading.Lock()),
             q.call(daskfuncs.inc, 2)], consumeErrors=True)
        self.assertEqual([outcome for _, outcome in outcomes[::2]], [2, 3])
        self.assertFalse(outcomes[1][0])
        outcomes[1][1].trap(errors.WorkerError)


class TestIteration(DaskTestCase):

    @defer.inlineCallbacks
    def test_iteratorComesInBatches(self):
        q, worker = yield self.makeQueue(iterationBatch=100)
        fetches = []
        fetch = worker.fetch

        def countingFetch(remote):
            fetches.append(remote.ID)
            return fetch(remote)
        worker.fetch = countingFetch
        dr = yield q.call(daskfuncs.count, 250)
        self.assertIsInstance(dr, Deferator)
        self.assertEqual((yield collect(dr)), list(range(250)))
        self.assertEqual(len(fetches), 2)
        self.assertTrue((yield dr.d))
        self.assertEqual(sum(client().run(daskfuncs.heldIterators).values()),
                         0)

    @defer.inlineCallbacks
    def test_stoppedIteratorIsDropped(self):
        q, worker = yield self.makeQueue(iterationBatch=10)
        dr = yield q.call(daskfuncs.count, 1000)
        self.assertEqual((yield next(dr)), 0)
        self.assertEqual(
            sum(client().run(daskfuncs.heldIterators).values()), 1)
        dr.stop()
        yield waitUntil(lambda: sum(client().run(
            daskfuncs.heldIterators).values()) == 0, "the iterator dropped")

    @defer.inlineCallbacks
    def test_emptyIteratorGivesEmptyList(self):
        q, worker = yield self.makeQueue()
        self.assertEqual((yield q.call(daskfuncs.emptyIterator)), [])

    @defer.inlineCallbacks
    def test_rawIteratorThatCannotPickleIsAnError(self):
        q, worker = yield self.makeQueue()
        yield self.assertFailure(
            q.call(daskfuncs.count, 3, raw=True), errors.WorkerError)


class TestTimeoutsAndCancelling(DaskTestCase):

    @defer.inlineCallbacks
    def test_timeoutCancelsAndFailsAfterTheRetry(self):
        q, worker = yield self.makeQueue()
        started = time.monotonic()
        yield self.assertFailure(
            q.call(daskfuncs.ranFor, 1.5, timeout=0.3), errors.TimeoutError)
        self.assertLess(time.monotonic() - started, 1.4)
        self.assertEqual(worker.tasks, [])
        yield waitUntil(lambda: not knownKeys("ranFor"),
                        "the scheduler to forget the calls")
        self.assertEqual((yield q.call(daskfuncs.inc, 1)), 2)
        yield self.waitForIdleCluster()

    @defer.inlineCallbacks
    def test_cancellingTheDeferredCancelsTheDaskFuture(self):
        q, worker = yield self.makeQueue()
        d = q.call(daskfuncs.ranFor, 1.0)
        yield waitUntil(lambda: busyThreads() == 1, "the call to run")
        self.assertEqual(len(knownKeys("ranFor")), 1)
        d.cancel()
        yield self.assertFailure(d, CancelledError)
        yield waitUntil(lambda: not knownKeys("ranFor"),
                        "the scheduler to forget the call")
        self.assertEqual(worker.tasks, [])
        self.assertEqual((yield q.call(daskfuncs.inc, 1)), 2)
        yield self.waitForIdleCluster()


class TestUpdates(DaskTestCase):

    @defer.inlineCallbacks
    def test_updateRunsOnEveryWorkerIncludingLaterOnes(self):
        q, worker = yield self.makeQueue()
        cluster = _fixture["cluster"]
        results = yield q.update(daskfuncs.setState, "persistent")
        self.assertEqual(len(results), 1)
        self.assertEqual(sorted(results[0].values()),
                         sorted(client().run(daskfuncs.pid).values()))
        yield q.update(daskfuncs.setState, "ephemeral", ephemeral=True)
        self.assertEqual(set(client().run(daskfuncs.getState).values()),
                         {"ephemeral"})
        before = set(client().run(daskfuncs.pid))
        cluster.scale(3)
        try:
            yield threads.deferToThread(client().wait_for_workers, 3)
            states = client().run(daskfuncs.getState)
            newcomers = set(states) - before
            self.assertEqual(len(newcomers), 1)
            self.assertEqual(states[newcomers.pop()], "persistent")
        finally:
            cluster.scale(2)
            yield waitUntil(
                lambda: len(client().scheduler_info()["workers"]) == 2,
                "the cluster back to two workers")
        names = client().run_on_scheduler(daskfuncs.pluginNames)
        self.assertTrue(any(name.startswith("asynqueue-update-")
                            for name in names))
        yield q.shutdown()
        names = client().run_on_scheduler(daskfuncs.pluginNames)
        self.assertFalse(any(name.startswith("asynqueue-update-")
                             for name in names))

    @defer.inlineCallbacks
    def test_failingUpdateIsAnError(self):
        q, worker = yield self.makeQueue()
        failure = yield self.assertFailure(
            q.update(daskfuncs.fail, "no", ephemeral=True), defer.FirstError)
        self.assertTrue(failure.subFailure.check(errors.WorkerError))
        text = failure.subFailure.getErrorMessage()
        self.assertIn("The update failed on Dask workers", text)
        self.assertEqual(text.count("ValueError: no"), 2)


class TestClusterGoesAway(DaskTestCase):

    @defer.inlineCallbacks
    def test_lostSchedulerRetriesCallsElsewhereAndResigns(self):
        """The scheduler goes away mid-call: the call on the cluster is
        retried (status d), the one waiting in the worker is reassigned,
        both run on another worker, and the DaskWorker resigns and
        closes."""
        cluster = newCluster(1)
        self.addCleanup(cluster.close)
        q, worker = yield self.makeQueue(cluster.scheduler_address)
        self.assertEqual(worker.taskLimit, 1)
        here = os.getpid()
        d1 = q.call(daskfuncs.sleepUnless, 30, here)
        d2 = q.call(daskfuncs.sleepUnless, 30, here, series="dask")
        yield waitUntil(lambda: any(
            ts.state == "processing" for ts in cluster.scheduler.tasks.values()
        ), "the call to run")
        self.assertEqual(len(worker.tasks), 2)
        # The cluster crashes: its worker process is killed, and its
        # scheduler goes.
        for nanny in cluster.workers.values():
            os.kill(nanny.process.pid, signal.SIGKILL)
        yield threads.deferToThread(cluster.close)
        yield waitUntil(lambda: worker not in q.workers(), "resignation")
        yield worker.whenClosed()
        self.assertEqual(worker.client.status, "closed")
        yield q.attachWorker(AsyncWorker(series=["dask"]))
        self.assertEqual((yield defer.gatherResults([d1, d2])), [here, here])
        d3 = q.call(daskfuncs.sleepUnless, 0, here)
        self.assertEqual((yield d3), here)

    @defer.inlineCallbacks
    def test_unreachableSchedulerResignsWithoutHanging(self):
        import dask
        with dask.config.set({"distributed.comm.timeouts.connect": "0.5s"}):
            worker = DaskWorker("tcp://127.0.0.1:9")
            q = TaskQueue(worker, returnFailure=True)
            self.queues.append(q)
            self.daskWorkers.append(worker)
            d = q.call(daskfuncs.inc, 1)
            yield self.assertFailure(worker.whenConnected(),
                                     errors.WorkerError)
        yield waitUntil(lambda: len(q) == 0, "resignation")
        yield q.attachWorker(AsyncWorker())
        self.assertEqual((yield d), 2)
