"""
Tests of process workers, the basics: results and errors under each error
policy, ordering, series, queue keywords, raw results, updates, and what a
child sees of its parent (sys.path, working directory, environment).
"""
import os
import subprocess
import sys

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from asynqueue import errors
from asynqueue.base import TaskQueue
from asynqueue.interfaces import NOT_READY
from asynqueue.process import ProcessQueue, ProcessWorker
from asynqueue.tasks import Task

import procfuncs
from proccase import ProcessTestCase
from support import capturedLog, capturedStderr


def cube(x):
    """A function of this test module (the child imports the module)."""
    return x ** 3


class TestCalls(ProcessTestCase):

    @defer.inlineCallbacks
    def test_results(self):
        q = self.makeQueue(2)
        results = yield defer.gatherResults(
            [q.call(procfuncs.inc, x) for x in range(20)])
        self.assertEqual(results, list(range(1, 21)))
        self.assertEqual((yield q.call(pow, 2, 10)), 1024)

    @defer.inlineCallbacks
    def test_runsInAnotherProcess(self):
        q = self.makeQueue()
        pid = yield q.call(procfuncs.pid)
        self.assertNotEqual(pid, os.getpid())
        self.assertEqual(pid, self.workerOf(q).process.pid)

    @defer.inlineCallbacks
    def test_functionOfTestModule(self):
        q = self.makeQueue()
        self.assertEqual((yield q.call(cube, 3)), 27)

    @defer.inlineCallbacks
    def test_lambdaAndClosure(self):
        q = self.makeQueue()
        offset = 10
        self.assertEqual((yield q.call(lambda x: x + offset, 5)), 15)

        def closure(x):
            return x * offset
        self.assertEqual((yield q.call(closure, 4)), 40)

    @defer.inlineCallbacks
    def test_queueKeywordsNeverReachFunction(self):
        q = self.makeQueue()
        args, kw = yield q.call(
            procfuncs.keywords, 1, a=2, niceness=3, series=None, timeout=10,
            doNext=True, doLast=False, returnFailure=True, raw=False)
        self.assertEqual((args, kw), ((1,), {"a": 2}))

    @defer.inlineCallbacks
    def test_seriesRunsOnQualifiedWorkers(self):
        q = self.makeQueue()
        worker = self.workerOf(q)
        self.assertEqual((yield q.call(procfuncs.inc, 1, series="process")), 2)
        d = q.call(procfuncs.pid, series="special")
        self.assertFalse(d.called)
        q.qualifyWorker(worker, "special")
        self.assertEqual((yield d), worker.process.pid)

    @defer.inlineCallbacks
    def test_rawGeneratorIsAnErrorWorkerSurvives(self):
        """A raw generator cannot pickle: that call fails, clearly."""
        q = self.makeQueue()
        pid = self.workerOf(q).process.pid
        try:
            yield q.call(procfuncs.generator, 3, raw=True)
        except errors.WorkerError as error:
            self.assertIn("pickl", str(error))
        else:
            self.fail("a raw generator came back")
        self.assertEqual((yield q.call(procfuncs.inc, 1)), 2)
        self.assertEqual(self.workerOf(q).process.pid, pid)


class TestOrdering(ProcessTestCase):

    @defer.inlineCallbacks
    def test_priorityOrderWithWorkerBusy(self):
        """Niceness, doNext and doLast order the calls waiting for a busy
        worker (pipelining=1: it holds one call at a time)."""
        q = self.makeQueue(1, pipelining=1)
        release = self.tmpPath()
        order = []

        def call(name, **kw):
            d = q.call(procfuncs.echo, name, **kw)
            return d.addCallback(order.append)
        busy = q.call(procfuncs.waitForFile, release)
        calls = [
            call("last", doLast=True),
            call("nice", niceness=20),
            call("normal"),
            call("eager", niceness=-20),
            call("next", doNext=True),
        ]
        procfuncs.touch(release)
        self.assertEqual((yield busy), "released")
        yield defer.gatherResults(calls)
        self.assertEqual(order, ["next", "eager", "normal", "nice", "last"])


    @defer.inlineCallbacks
    def test_slowCallNeverHoldsBackAnEarlierReply(self):
        """Two calls reach a child together, the second waiting until the
        test has the first one's result: that result must come back
        before the second call ends."""
        q = self.makeQueue(1, pipelining=3)
        gate, release = self.tmpPath(), self.tmpPath()
        busy = q.call(procfuncs.waitForFile, gate)
        first = q.call(procfuncs.echo, "first")
        second = q.call(procfuncs.waitForFile, release)
        first.addCallback(lambda result: procfuncs.touch(release) and result)
        procfuncs.touch(gate)
        self.assertEqual((yield busy), "released")
        self.assertEqual((yield first), "first")
        self.assertEqual((yield second), "released")


class TestReadiness(ProcessTestCase):
    """A worker tells when it can take another task: through the Deferred
    of ``run`` (IWorker), or through ``runOrWait``'s hook, which the queue
    uses."""

    def task(self, x):
        return Task(procfuncs.inc, (x,), {}, 0, None)

    @defer.inlineCallbacks
    def test_runFiresWhenReadyAgain(self):
        worker = ProcessWorker(pipelining=2)
        try:
            first, second, third = (self.task(x) for x in (1, 2, 3))
            self.assertTrue(worker.run(first).called)
            ready = worker.run(second)
            self.assertFalse(ready.called)
            yield ready
            self.assertTrue(first.d.called or second.d.called)
            worker.run(third)
            results = yield defer.gatherResults(
                [first.d, second.d, third.d])
            self.assertEqual(results, [(b'r', 2), (b'r', 3), (b'r', 4)])
        finally:
            yield worker.stop()

    @defer.inlineCallbacks
    def test_brokenReadyHookIsLoggedAndWorkerGoesOn(self):
        """What ``whenReady`` raises is logged; it never reaches the
        pipe's reader, and the worker keeps serving."""
        worker = ProcessWorker(pipelining=1)
        told = []

        def broken(arg):
            told.append(arg)
            raise ZeroDivisionError(arg)
        try:
            task = self.task(1)
            self.assertIs(worker.runOrWait(task, broken, "x"), NOT_READY)
            self.assertEqual((yield task.d), (b'r', 2))
            yield deferLater(reactor, 0, lambda: None)
            self.assertEqual(told, ["x"])
            self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
            task = self.task(2)
            self.assertIs(worker.runOrWait(task, told.append, "y"), NOT_READY)
            self.assertEqual((yield task.d), (b'r', 3))
            yield deferLater(reactor, 0, lambda: None)
            self.assertEqual(told, ["x", "y"])
            self.assertTrue(worker.process.is_alive())
        finally:
            yield worker.stop()


class TestErrorPolicy(ProcessTestCase):

    @defer.inlineCallbacks
    def test_returnFailure(self):
        q = self.makeQueue()
        try:
            yield q.call(procfuncs.divide, 1, 0)
        except errors.WorkerError as error:
            self.assertIn("Exception 'division by zero", str(error))
            self.assertIn("ZeroDivisionError", str(error))
        else:
            self.fail("no WorkerError")
        self.assertEqual((yield q.call(procfuncs.divide, 4, 2)), 2)

    @defer.inlineCallbacks
    def test_warnLogsAndReturnsText(self):
        q = self.makeQueue(returnFailure=False, warn=True)
        with capturedLog() as records:
            text = yield q.call(procfuncs.divide, 1, 0)
        self.assertIn("Exception 'division by zero", text)
        self.assertEqual(len(records), 1)
        self.assertIsNone(q._dc)

    @defer.inlineCallbacks
    def test_defaultPolicyStopsReactorLater(self):
        """The 0.9 default: text as result, "ERROR:" on stderr, a reactor
        stop scheduled (cancelled here by shutting down)."""
        q = self.makeQueue(returnFailure=False)
        with capturedStderr() as stderr:
            text = yield q.call(procfuncs.divide, 1, 0)
            written = stderr.getvalue()
        self.assertIn("division by zero", text)
        self.assertIn("ERROR:", written)
        self.assertTrue(q._dc.active())
        yield q.shutdown()
        self.assertFalse(q._dc.active())


class TestUpdates(ProcessTestCase):

    def getEverywhere(self, q, name):
        return q.update(procfuncs.getGlobal, name, ephemeral=True)

    @defer.inlineCallbacks
    def test_updateRunsOnEveryWorker(self):
        q = self.makeQueue(2)
        self.assertEqual((yield q.update(procfuncs.setGlobal, "x", 5)), [5, 5])
        self.assertEqual((yield self.getEverywhere(q, "x")), [5, 5])

    @defer.inlineCallbacks
    def test_updateReplayedOnLaterWorker(self):
        q = self.makeQueue(1)
        yield q.update(procfuncs.setGlobal, "x", 7)
        yield q.attachWorker(ProcessWorker())
        self.assertEqual(len(q), 2)
        self.assertEqual((yield self.getEverywhere(q, "x")), [7, 7])

    @defer.inlineCallbacks
    def test_updateReplayedOnReplacementChild(self):
        import signal
        q = self.makeQueue(2)
        yield q.update(procfuncs.setGlobal, "x", 9)
        worker = self.workerOf(q, 1)
        old = worker.process
        os.kill(old.pid, signal.SIGKILL)
        yield self.replaced(worker, old)
        self.assertEqual((yield self.getEverywhere(q, "x")), [9, 9])
        self.assertEqual((yield q.call(procfuncs.inc, 1)), 2)


    @defer.inlineCallbacks
    def test_updateKillingChildNotReplayed(self):
        """An update that kills its child fails, and is not replayed on
        the replacement (which would die too, for ever)."""
        q = self.makeQueue(1)
        worker = self.workerOf(q)
        d = q.update(procfuncs.exitNow, 4)
        failure = yield self.assertFailure(d, defer.FirstError)
        self.assertIn("exit code 4", str(failure.subFailure.value))
        process = worker.process
        self.assertEqual((yield q.call(procfuncs.inc, 1)), 2)
        self.assertIs(worker.process, process)
        self.assertTrue(process.is_alive())


class TestTransport(ProcessTestCase):

    @defer.inlineCallbacks
    def test_childSeesPathCwdAndEnvironment(self):
        moduleDir = self.tmpPath()
        os.makedirs(moduleDir)
        with open(os.path.join(moduleDir, "aqpathprobe.py"), "w") as fh:
            fh.write("VALUE = 'found'\n")
        sys.path.append(moduleDir)
        self.addCleanup(sys.path.remove, moduleDir)
        os.environ["AQ_PROCESS_TEST"] = "hello child"
        self.addCleanup(os.environ.pop, "AQ_PROCESS_TEST")
        cwd = os.getcwd()
        os.chdir(moduleDir)
        self.addCleanup(os.chdir, cwd)
        q = self.makeQueue()
        value, childCwd, childPath = yield q.call(
            procfuncs.environment, "AQ_PROCESS_TEST")
        self.assertEqual(value, "hello child")
        self.assertEqual(os.path.realpath(childCwd),
                         os.path.realpath(moduleDir))
        self.assertIn(moduleDir, childPath)
        for entry in sys.path:
            if entry:
                self.assertIn(entry, childPath)
        self.assertEqual(
            (yield q.call(procfuncs.importAndGet, "aqpathprobe", "VALUE")),
            "found")

    @defer.inlineCallbacks
    def test_envKeyword(self):
        """``env`` replaces the environment; our sys.path still goes."""
        q = self.makeQueue(env={"AQ_ONLY": "this"})
        value, cwd, childPath = yield q.call(procfuncs.environment, "AQ_ONLY")
        self.assertEqual(value, "this")
        keys = yield q.call(lambda: sorted(os.environ))
        self.assertNotIn("PATH", keys)
        self.assertIn("PYTHONPATH", keys)

    @defer.inlineCallbacks
    def test_processObject(self):
        q = self.makeQueue()
        process = self.workerOf(q).process
        self.assertIsInstance(process.pid, int)
        self.assertTrue(process.is_alive())
        process.join(0.01)  # Never blocks the reactor thread.
        self.assertTrue(process.is_alive())
        yield q.shutdown()
        self.assertFalse(process.is_alive())
        process.join(1)
        process.join()

    @defer.inlineCallbacks
    def test_memUsage(self):
        q = self.makeQueue()
        yield q.call(procfuncs.inc, 1)
        usage = self.workerOf(q).memUsage()
        self.assertIsInstance(usage, int)
        self.assertGreater(usage, 1000)

    def test_cores(self):
        cores = ProcessQueue.cores()
        self.assertIsInstance(cores, int)
        self.assertGreaterEqual(cores, 1)
        self.assertEqual(ProcessWorker.cores(), cores)

    @defer.inlineCallbacks
    def test_stats(self):
        q = self.makeQueue(2, callStats=True)
        yield defer.gatherResults([q.call(procfuncs.inc, x) for x in range(6)])
        stats = yield q.stats()
        self.assertEqual(len(stats), 6)
        for mainSide, childSide in stats:
            self.assertIsInstance(mainSide, float)
            self.assertIsInstance(childSide, float)
            self.assertGreaterEqual(mainSide, childSide)

    @defer.inlineCallbacks
    def test_statsOffGivesEmptyList(self):
        q = self.makeQueue()
        yield q.call(procfuncs.inc, 1)
        self.assertEqual((yield q.stats()), [])

    def test_lenAndBool(self):
        q = self.makeQueue(2)
        self.assertEqual(len(q), 2)
        self.assertTrue(q)
        self.assertEqual(len(self.makeQueue(0)), 0)

    def test_badN(self):
        for bad in (-1, 1.5, "2", None, True):
            self.assertRaises(ValueError, ProcessQueue, bad)

    def test_badWorkerOptions(self):
        for name in ("pipelining", "shmThreshold", "maxTasks",
                     "iterationBatch"):
            self.assertRaises(ValueError, ProcessWorker, **{name: 0})

    @defer.inlineCallbacks
    def test_workerInPlainTaskQueue(self):
        worker = ProcessWorker()
        q = TaskQueue(worker, returnFailure=True)
        self.queues.append(q)
        self.assertEqual((yield q.call(procfuncs.inc, 41)), 42)
        self.assertIs(q.workers()[0], worker)


#: A whole ProcessQueue life in a fresh interpreter; prints whether numpy
#: was imported in it.
NO_NUMPY_SCRIPT = """
import sys
from twisted.internet import defer, reactor
from asynqueue.process import ProcessQueue

@defer.inlineCallbacks
def main():
    q = ProcessQueue(1)
    results = yield defer.gatherResults([q.call(pow, 2, n) for n in range(5)])
    assert results == [1, 2, 4, 8, 16], results
    yield q.shutdown()
    print("numpy" in sys.modules)

reactor.callWhenRunning(lambda: main().addBoth(lambda _: reactor.stop()))
reactor.run()
"""


class TestImports(ProcessTestCase):

    def test_queueWithoutArraysNeverImportsNumpy(self):
        """Calls and shutdown of a queue that sees no array leave numpy
        unimported in the parent (shutdown once imported it to free
        SharedArrays, costing a tenth of a second)."""
        done = subprocess.run(
            [sys.executable, "-c", NO_NUMPY_SCRIPT], capture_output=True,
            text=True, timeout=60, env=dict(
                os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
        self.assertEqual(done.stdout.strip().splitlines()[-1:], ["False"],
                         done.stderr)
