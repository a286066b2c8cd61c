"""
Tests of process workers when things go wrong: children killed from
outside or by their calls, protocol errors, timeouts, cancellation,
recycling, shutdown, the death of the parent, and a burst of calls.
"""
import os
import select
import signal
import subprocess
import sys
import textwrap
import time

from twisted.internet import defer
from twisted.internet.defer import CancelledError

from asynqueue import errors
from asynqueue.process import ProcessWorker

import procfuncs
from proccase import (
    DEADLINE, ProcessTestCase, childPIDs, collect, isRunning, shmExists,
    waitUntil)


class FaultTestCase(ProcessTestCase):

    def assertPoolWhole(self, q, N):
        """``q`` has ``N`` workers, each with a live child."""
        self.assertEqual(len(q), N)
        for worker in q.workers():
            self.assertTrue(worker.process.is_alive())
            self.assertTrue(isRunning(worker.process.pid))

    @defer.inlineCallbacks
    def assertFailsSaying(self, d, *phrases):
        try:
            yield d
        except errors.WorkerError as error:
            for phrase in phrases:
                self.assertIn(phrase, str(error))
        else:
            self.fail("no WorkerError")

    @defer.inlineCallbacks
    def runningCall(self, q, seconds=30.0, once=False, **kw):
        """Start a call that sleeps, and wait until it runs: D→(its
        Deferred, the pid of the child running it)."""
        marker = self.tmpPath()
        f = procfuncs.touchOnceThenSleep if once else procfuncs.touchThenSleep
        d = q.call(f, marker, seconds, **kw)
        yield waitUntil(lambda: os.path.exists(marker) and
                        os.path.getsize(marker), "the call to start")
        with open(marker) as fh:
            pid = int(fh.read())
        return d, pid

    def recordSpawns(self):
        """The list of every child process started from now on."""
        spawned = []
        spawn = ProcessWorker._spawn

        def recording(worker):
            child = spawn(worker)
            spawned.append(child)
            return child
        self.patch(ProcessWorker, "_spawn", recording)
        return spawned

    def workerWithPID(self, q, pid):
        for worker in q.workers():
            if worker.process.pid == pid:
                return worker
        self.fail("no worker has child {}".format(pid))


class TestChildDeaths(FaultTestCase):

    @defer.inlineCallbacks
    def test_idleChildKilledIsReplaced(self):
        q = self.makeQueue(2)
        worker = self.workerOf(q)
        old = worker.process
        os.kill(old.pid, signal.SIGKILL)
        yield self.replaced(worker, old)
        self.assertPoolWhole(q, 2)
        results = yield defer.gatherResults(
            [q.call(procfuncs.inc, x) for x in range(10)])
        self.assertEqual(results, list(range(1, 11)))

    @defer.inlineCallbacks
    def test_runningCallRetriedAfterKill(self):
        """A call whose child is killed from outside runs again, and
        succeeds where retrying helps."""
        q = self.makeQueue(2)
        d, pid = yield self.runningCall(q, once=True)
        worker = self.workerWithPID(q, pid)
        old = worker.process
        os.kill(pid, signal.SIGKILL)
        self.assertEqual((yield d), "retried")
        yield self.replaced(worker, old)
        self.assertPoolWhole(q, 2)

    @defer.inlineCallbacks
    def test_exitingCallFailsAfterTwoDeaths(self):
        q = self.makeQueue(2)
        yield self.assertFailsSaying(
            q.call(procfuncs.exitNow, 3), "exit code 3", "exitNow")
        yield waitUntil(lambda: all(
            w.process.is_alive() for w in q.workers()), "replacements")
        self.assertPoolWhole(q, 2)
        self.assertEqual((yield q.call(procfuncs.inc, 1)), 2)

    @defer.inlineCallbacks
    def test_segfaultingCallFailsAfterTwoDeaths(self):
        q = self.makeQueue(1)
        pid = self.workerOf(q).process.pid
        yield self.assertFailsSaying(
            q.call(procfuncs.segfault), "signal {}".format(signal.SIGSEGV))
        self.assertNotEqual(self.workerOf(q).process.pid, pid)
        self.assertEqual((yield q.call(procfuncs.inc, 1)), 2)
        self.assertPoolWhole(q, 1)

    @defer.inlineCallbacks
    def test_innocentCallsBehindCulpritSucceed(self):
        q = self.makeQueue(1, pipelining=4)
        culprit = q.call(procfuncs.exitNow, 5)
        innocents = [q.call(procfuncs.inc, x) for x in range(6)]
        second = q.call(procfuncs.exitNow, 6)
        more = [q.call(procfuncs.inc, x) for x in range(6, 9)]
        yield self.assertFailsSaying(culprit, "exit code 5")
        yield self.assertFailsSaying(second, "exit code 6")
        self.assertEqual((yield defer.gatherResults(innocents + more)),
                         list(range(1, 10)))
        self.assertPoolWhole(q, 1)

    @defer.inlineCallbacks
    def test_killedWhileCallsWaitToBeWritten(self):
        """A child killed while a large call waits for room in its pipe:
        the call goes to the replacement; no writer is left watched."""
        q = self.makeQueue(1, pipelining=2)
        d, pid = yield self.runningCall(q, once=True)
        data = b"x" * (8 << 20)
        big = q.call(procfuncs.sizeOf, data)
        os.kill(pid, signal.SIGKILL)
        self.assertEqual((yield big), ("bytes", len(data)))
        self.assertEqual((yield d), "retried")
        self.assertPoolWhole(q, 1)

    @defer.inlineCallbacks
    def test_corruptFrameKillsAndReplacesChild(self):
        """Garbage on the reply pipe is a protocol error: the child is
        killed and replaced; the call that wrote it gives up."""
        q = self.makeQueue(1)
        yield self.assertFailsSaying(
            q.call(procfuncs.corruptReplies), "corruptReplies",
            "killed by signal {}".format(signal.SIGKILL))
        self.assertPoolWhole(q, 1)
        self.assertEqual((yield q.call(procfuncs.inc, 1)), 2)

    def test_missingInterpreter(self):
        fds = len(os.listdir("/proc/self/fd"))
        self.assertRaises(FileNotFoundError, ProcessWorker,
                          python="/nonexistent/python")
        self.assertEqual(len(os.listdir("/proc/self/fd")), fds)

    @defer.inlineCallbacks
    def test_badBufferDescriptorKillsAndReplacesChild(self):
        """A well-formed frame with nonsense in it is a protocol error
        too."""
        q = self.makeQueue(1)
        yield self.assertFailsSaying(
            q.call(procfuncs.badBufferFrame), "badBufferFrame")
        self.assertPoolWhole(q, 1)
        self.assertEqual((yield q.call(procfuncs.inc, 1)), 2)

    @defer.inlineCallbacks
    def test_childrenThatCannotStartMakeWorkerResign(self):
        """A worker whose children end before serving (a bad interpreter)
        fails its calls and resigns instead of respawning forever."""
        q = self.makeQueue(0)
        yield q.attachWorker(ProcessWorker(python="/bin/false"))
        d = q.call(procfuncs.inc, 1)
        yield self.assertFailsSaying(d, "ended before serving")
        yield waitUntil(lambda: len(q) == 0, "the worker to resign")


class TestTimeoutAndCancel(FaultTestCase):

    @defer.inlineCallbacks
    def test_timeoutKillsRetriesOnceThenFails(self):
        spawned = self.recordSpawns()
        q = self.makeQueue(1)
        worker = self.workerOf(q)
        d = q.call(procfuncs.touchThenSleep, self.tmpPath(), 30, timeout=0.3)
        yield self.assertFailure(d, errors.TimeoutError)
        self.assertEqual(len(spawned), 3)
        yield waitUntil(lambda: not any(
            isRunning(child.pid) for child in spawned[:2]),
            "the stuck children to end")
        self.assertIs(worker.process, spawned[2])
        self.assertPoolWhole(q, 1)
        self.assertEqual((yield q.call(procfuncs.inc, 1)), 2)

    @defer.inlineCallbacks
    def test_timeoutRetrySucceeds(self):
        q = self.makeQueue(1)
        d = q.call(procfuncs.touchOnceThenSleep, self.tmpPath(), 30,
                   timeout=1.0)
        self.assertEqual((yield d), "retried")

    @defer.inlineCallbacks
    def test_cancelRunningCallKillsItsChild(self):
        q = self.makeQueue(2)
        d, pid = yield self.runningCall(q)
        worker = self.workerWithPID(q, pid)
        old = worker.process
        others = [q.call(procfuncs.inc, x) for x in range(8)]
        d.cancel()
        yield self.assertFailure(d, CancelledError)
        yield self.replaced(worker, old)
        self.assertFalse(isRunning(pid))
        self.assertEqual((yield defer.gatherResults(others)),
                         list(range(1, 9)))
        self.assertPoolWhole(q, 2)

    @defer.inlineCallbacks
    def test_cancelQueuedCallRemovesIt(self):
        q = self.makeQueue(1, pipelining=1)
        release, never = self.tmpPath(), self.tmpPath()
        busy = q.call(procfuncs.waitForFile, release)
        d = q.call(procfuncs.touch, never)
        after = q.call(procfuncs.inc, 1)
        d.cancel()
        yield self.assertFailure(d, CancelledError)
        procfuncs.touch(release)
        self.assertEqual((yield busy), "released")
        self.assertEqual((yield after), 2)
        self.assertFalse(os.path.exists(never))


class TestLifecycle(FaultTestCase):

    @defer.inlineCallbacks
    def test_maxTasksRecyclesChildren(self):
        q = self.makeQueue(1, maxTasks=3)
        pids = yield defer.gatherResults(
            [q.call(procfuncs.pid) for _ in range(10)])
        self.assertEqual(len(set(pids)), 4)
        for pid in set(pids):
            self.assertLessEqual(pids.count(pid), 3)
        results = yield defer.gatherResults(
            [q.call(procfuncs.inc, x) for x in range(7)])
        self.assertEqual(results, list(range(1, 8)))
        current = self.workerOf(q).process.pid
        yield waitUntil(lambda: childPIDs() == [current],
                        "recycled children to end")

    @defer.inlineCallbacks
    def test_recycledChildKeepsItsIterator(self):
        """A child due for recycling serves its iterators to the end."""
        q = self.makeQueue(1, maxTasks=2, iterationBatch=4)
        dr = yield q.call(procfuncs.generator, 30)
        self.assertEqual((yield next(dr)), 0)
        pids = yield defer.gatherResults(
            [q.call(procfuncs.pid) for _ in range(4)])
        self.assertEqual(len(set(pids)), 3)
        self.assertEqual((yield collect(dr)), list(range(1, 30)))
        current = self.workerOf(q).process.pid
        yield waitUntil(lambda: childPIDs() == [current],
                        "recycled children to end")

    @defer.inlineCallbacks
    def test_shutdownWaitsForCallsInFlight(self):
        q = self.makeQueue(2, pipelining=3)
        release = self.tmpPath()
        calls = [q.call(procfuncs.waitForFile, release) for _ in range(6)]
        processes = [w.process for w in q.workers()]
        dShutdown = q.shutdown()
        self.assertFalse(dShutdown.called)
        procfuncs.touch(release)
        yield dShutdown
        self.assertEqual((yield defer.gatherResults(calls)),
                         ["released"] * 6)
        for process in processes:
            self.assertFalse(process.is_alive())
            self.assertRaises(ProcessLookupError, os.kill, process.pid, 0)
        self.assertNothingLeft()

    @defer.inlineCallbacks
    def test_childKilledDuringShutdown(self):
        """A child dying while the queue shuts down: shutdown still ends,
        the innocent calls still succeed."""
        q = self.makeQueue(1, pipelining=4)
        d, pid = yield self.runningCall(q)
        innocents = [q.call(procfuncs.inc, x) for x in range(3)]
        dShutdown = q.shutdown()
        os.kill(pid, signal.SIGKILL)
        yield dShutdown
        self.assertEqual((yield defer.gatherResults(innocents)), [1, 2, 3])
        self.assertTrue(d.called)
        d.addErrback(lambda failure: None)

    def test_childrenDieWithTheirParent(self):
        """A parent killed with SIGKILL while its workers are busy: every
        child ends, within a bounded wait, and the next process queue
        started frees the shared memory the parent left."""
        script = textwrap.dedent("""
            import sys
            from twisted.internet import reactor
            from asynqueue import SharedArray
            from asynqueue.process import ProcessQueue
            import procfuncs

            q = ProcessQueue(2)
            print(SharedArray(1000).segment.name, flush=True)
            for worker in q.workers():
                print(worker.process.pid, flush=True)
            for _ in range(4):
                q.call(procfuncs.touchThenSleep, sys.argv[1], 60)
            reactor.run()
        """)
        marker = self.tmpPath()
        parent = subprocess.Popen(
            [sys.executable, "-c", script, marker], stdout=subprocess.PIPE,
            bufsize=0,
            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
        try:
            name = self.readLine(parent.stdout).decode().strip()
            pids = [int(self.readLine(parent.stdout)) for _ in range(2)]
            self.waitFor(lambda: os.path.exists(marker), "a call to run")
        finally:
            parent.kill()
            parent.wait()
            parent.stdout.close()
        self.waitFor(lambda: not any(isRunning(pid) for pid in pids),
                     "the children of a dead parent to end")
        self.assertTrue(shmExists(name))
        self.makeQueue()
        self.assertFalse(shmExists(name))

    def readLine(self, stream):
        ready, _, _ = select.select([stream], [], [], DEADLINE)
        self.assertTrue(ready, "the parent printed nothing")
        return stream.readline()

    def waitFor(self, condition, what):
        """Wait, blocking, for a condition of other processes."""
        deadline = time.monotonic() + DEADLINE
        while not condition():
            self.assertLess(time.monotonic(), deadline,
                            "waited too long for " + what)
            time.sleep(0.01)


class TestLoad(FaultTestCase):

    @defer.inlineCallbacks
    def test_burstOfTinyCalls(self):
        """100,000 calls issued at once on 2 workers: all right, nothing
        stuck, no RecursionError."""
        N = 100000
        q = self.makeQueue(2)
        results = yield defer.gatherResults(
            [q.call(procfuncs.inc, x) for x in range(N)])
        self.assertEqual(results, list(range(1, N + 1)))
        self.assertPoolWhole(q, 2)

    test_burstOfTinyCalls.timeout = 120
