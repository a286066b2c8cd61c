"""
Tests of asynqueue.tasks: Task, TaskFactory, AssignmentFactory and
TaskHandler, through their public API.
"""
import pytest
from twisted.internet import defer, reactor
from twisted.internet.defer import CancelledError
from twisted.trial import unittest

from asynqueue import errors
from asynqueue._speedups import scheduler
from asynqueue.interfaces import NOT_READY
from asynqueue.tasks import (
    Assignment, AssignmentFactory, Task, TaskFactory, TaskHandler)

from support import ScriptedWorker


def plus(x, y=0):
    return x + y


def makeTask(priority=1.0, series=None, timeout=None, kw=None):
    return Task(plus, (1,), kw or {}, priority, series, timeout)


class TestTask(unittest.TestCase):

    def test_badArguments(self):
        self.assertRaises(TypeError, Task, plus, 1, {}, 1, None)
        self.assertRaises(TypeError, Task, plus, (1,), [], 1, None)
        Task(plus, [1], {}, 1, None)

    def test_attributes(self):
        task = Task(plus, (1,), {"y": 2}, 3.0, "s", 5)
        self.assertEqual(task.callTuple, (plus, (1,), {"y": 2}))
        self.assertEqual(
            (task.priority, task.series, task.timeout), (3.0, "s", 5))
        self.assertIsInstance(task.d, defer.Deferred)
        self.assertEqual(list(task.callbacks), [])

    def test_repr(self):
        self.assertEqual(
            repr(Task(plus, (1,), {"y": 2}, 1, None)), "Task: plus(1, y=2)")
        self.assertIn("'remoteMethod'",
                      repr(Task("remoteMethod", (), {}, 1, None)))

    def test_comparisons(self):
        low, high = makeTask(1.0), makeTask(2.0)
        self.assertTrue(low < high)
        self.assertTrue(high > low)
        self.assertTrue(low < None)
        self.assertFalse(low > None)
        twin = makeTask(1.0)
        self.assertNotEqual(low, twin)
        self.assertEqual(low, low)
        self.assertNotEqual(low, None)
        self.assertEqual(len({low, twin}), 2)

    def test_callbackOnce(self):
        task = makeTask()
        results = []
        task.d.addCallback(results.append)
        task.callback((b'r', 1))
        task.callback((b'r', 2))
        self.assertEqual(results, [(b'r', 1)])

    def test_timeoutStatusIsBytes(self):
        task = makeTask(timeout=0.01)
        task.startTimer()
        self.assertEqual(len(Task.timeoutCalls), 1)
        d = task.d

        def check(result):
            self.assertEqual(result[0], b't')
            self.assertIn("Timeout after", result[1])
            self.assertEqual(Task.timeoutCalls, [])
        return d.addCallback(check)

    def test_callbackCancelsTimer(self):
        task = makeTask(timeout=60)
        task.startTimer()
        task.callback((b'r', 3))
        self.assertEqual(Task.timeoutCalls, [])
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_reset(self):
        task = makeTask()
        first = task.d
        second = task.reset()
        self.assertIsNot(first, second)
        self.assertIs(task.d, second)

    def test_rushRelax(self):
        task = makeTask()
        task.rush()
        self.assertEqual(task.priority, -1000000)
        task.relax()
        self.assertEqual(task.priority, 1000000)

    def test_copyIsIndependent(self):
        task = Task(plus, (1,), {"y": 2, "consumer": "c", "raw": True},
                    4.0, "s", 7)
        seen = []
        task.addCallback(lambda r: seen.append(r) or r)
        kw = task.callTuple[2]
        kw.pop("consumer")
        kw.pop("raw")
        copy = task.copy()
        self.assertIsNot(copy.callTuple[2], kw)
        self.assertEqual(
            copy.callTuple[2], {"y": 2, "consumer": "c", "raw": True})
        self.assertEqual(
            (copy.priority, copy.series, copy.timeout), (4.0, "s", 7))
        copy.callback((b'r', 9))
        self.assertEqual(seen, [(b'r', 9)])

    def test_cancelCallsHook(self):
        task = makeTask()
        hooked = []
        task.cancelHook = hooked.append
        task.d.cancel()
        self.assertEqual(hooked, [task])
        return self.assertFailure(task.d, CancelledError)


class TestTaskFactory:

    def test_formula(self):
        factory = TaskFactory()
        tasks = [factory.new(plus, (), {}, n) for n in (-20, 0, 20)]
        assert [t.priority for t in tasks] == [1.0, 2 * 5.0, 3 * 17.0]

    @pytest.mark.parametrize("bad", [21, -21, 1.5, "1", None])
    def test_badNiceness(self, bad):
        with pytest.raises(ValueError, match="between -20 and \\+20"):
            TaskFactory().new(plus, (), {}, bad)

    def test_boolNicenessPasses(self):
        assert TaskFactory().new(plus, (), {}, True).priority == 1 + 2.1 ** 2

    def test_seriesSerials(self):
        factory = TaskFactory()
        serials = [factory._serial(s) for s in (1, 2, 1, 2, 1, 2)]
        assert serials == [1, 2, 2, 3, 3, 4]
        assert factory._serial("late") == 5
        assert factory.seriesNumbers == {1: 3, 2: 4, "late": 5}

    def test_customClass(self):
        class MyTask(Task):
            pass
        assert isinstance(TaskFactory(MyTask).new(plus, (), {}, 0), MyTask)

    def test_rushConstantsShared(self):
        assert scheduler.RUSH_PRIORITY == -1000000
        assert scheduler.RELAX_PRIORITY == 1000000


class FakeWorker:
    """Bare worker for AssignmentFactory: records runs."""

    def __init__(self):
        self.assignments = {}
        self.hired = True
        self.ran = []
        self.ready = None

    def run(self, task):
        self.ran.append(task)
        self.ready = defer.Deferred()
        return self.ready


class TestAssignmentFactory(unittest.TestCase):

    def test_requestThenTask(self):
        af, worker = AssignmentFactory(), FakeWorker()
        af.request(worker, None)
        task = makeTask()
        accepted = af.new(task)
        self.assertTrue(accepted.called)
        self.assertEqual(worker.ran, [task])
        self.assertIs(task.worker, worker)

    def test_pendingInPriorityOrder(self):
        af, worker = AssignmentFactory(), FakeWorker()
        tasks = [makeTask(p) for p in (3.0, 1.0, 2.0, 1.0)]
        for task in tasks:
            af.new(task)
        af.request(worker, None)
        for _ in range(3):
            worker.ready.callback(None)
        self.assertEqual(
            worker.ran, [tasks[1], tasks[3], tasks[2], tasks[0]])

    def test_requestsServedInOrder(self):
        af = AssignmentFactory()
        first, second = FakeWorker(), FakeWorker()
        af.request(first, None)
        af.request(second, None)
        af.new(makeTask())
        self.assertEqual((len(first.ran), len(second.ran)), (1, 0))

    def test_seriesAreSeparate(self):
        af, worker = AssignmentFactory(), FakeWorker()
        af.request(worker, "a")
        af.new(makeTask(series="b"))
        self.assertEqual(worker.ran, [])
        af.new(makeTask(series="a"))
        self.assertEqual(len(worker.ran), 1)

    def test_firedWorkerStopsRequesting(self):
        af, worker = AssignmentFactory(), FakeWorker()
        af.request(worker, None)
        af.new(makeTask())
        worker.hired = False
        worker.ready.callback(None)
        af.new(makeTask())
        self.assertEqual(len(worker.ran), 1)

    def test_cancelRequests(self):
        af, worker = AssignmentFactory(), FakeWorker()
        af.request(worker, None)
        af.cancelRequests(worker)
        af.new(makeTask())
        self.assertEqual(worker.ran, [])

    def test_cancelPending(self):
        af = AssignmentFactory()
        tasks = [makeTask(p, series=s) for p, s in
                 ((1.0, "a"), (2.0, "b"), (3.0, "a"))]
        accepted = [af.new(task) for task in tasks]
        removed = af.cancel(lambda task: task.series == "a")
        self.assertEqual(removed, [tasks[0], tasks[2]])
        self.assertFalse(accepted[1].called)
        self.assertTrue(accepted[0].called)

    def test_placedTasksWaitInPriorityOrderWithAssignments(self):
        """Tasks placed as their own assignments and Assignments of
        ``new`` share one heap; ``taken`` is told once per placed task."""
        af, worker = AssignmentFactory(), FakeWorker()
        taken = []
        tasks = [makeTask(p) for p in (3.0, 1.0, 2.0)]
        af.place(tasks[0], lambda: taken.append(0))
        accepted = af.new(tasks[1])
        af.place(tasks[2], lambda: taken.append(2))
        self.assertEqual(taken, [])
        af.request(worker, None)
        self.assertTrue(accepted.called)
        for _ in range(2):
            worker.ready.callback(None)
        self.assertEqual(worker.ran, [tasks[1], tasks[2], tasks[0]])
        self.assertEqual(taken, [2, 0])
        self.assertEqual([task.worker for task in tasks], [worker] * 3)

    def test_cancelPlaced(self):
        """A placed task that is withdrawn tells ``taken`` and never
        runs; the others still do."""
        af, worker = AssignmentFactory(), FakeWorker()
        taken = []
        tasks = [makeTask(p, series="a") for p in (1.0, 2.0)]
        for i, task in enumerate(tasks):
            af.place(task, lambda i=i: taken.append(i))
        self.assertEqual(af.cancel(lambda task: task is tasks[0]), [tasks[0]])
        self.assertEqual(taken, [0])
        af.request(worker, "a")
        self.assertEqual(worker.ran, [tasks[1]])
        self.assertEqual(taken, [0, 1])

    def test_requestsListedUntilMet(self):
        """A worker's requests are listed under its ``assignments`` until
        a task meets them."""
        af, worker = AssignmentFactory(), FakeWorker()
        af.request(worker, None)
        af.request(worker, "a")
        self.assertEqual(len(worker.assignments[None]), 1)
        af.place(makeTask(series="a"))
        self.assertEqual(worker.assignments["a"], [])
        self.assertEqual(len(worker.assignments[None]), 1)

    def test_synchronousWorkersDoNotRecurse(self):
        """Thousands of tasks finishing at once are matched in a loop,
        whether ``run`` fires at once (Assignments of ``new``) or
        ``runOrWait`` returns None (placed tasks): ready at once."""
        af = AssignmentFactory()

        class Instant(FakeWorker):
            def run(self, task):
                self.ran.append(task)
                return defer.succeed(None)

            def runOrWait(self, task, whenReady, arg):
                self.ran.append(task)
        worker = Instant()
        for i in range(5000):
            (af.new if i % 2 else af.place)(makeTask())
        af.request(worker, None)
        self.assertEqual(len(worker.ran), 5000)

    def test_placedTaskRunsThroughRunOrWait(self):
        """A worker offering ``runOrWait`` gets placed tasks through it (no
        Deferred per task): it asks for the next one only when it calls
        ``whenReady``, and only while hired."""
        af = AssignmentFactory()

        class Waiting(FakeWorker):
            def runOrWait(self, task, whenReady, arg):
                self.ran.append(task)
                self.ready = (whenReady, arg)
                return NOT_READY
        worker = Waiting()
        tasks = [makeTask(p) for p in (1.0, 2.0, 3.0)]
        for task in tasks:
            af.place(task)
        af.request(worker, None)
        self.assertEqual(worker.ran, tasks[:1])
        whenReady, arg = worker.ready
        whenReady(arg)
        self.assertEqual(worker.ran, tasks[:2])
        worker.hired = False
        whenReady, arg = worker.ready
        whenReady(arg)
        self.assertEqual(worker.ran, tasks[:2])
        self.assertEqual(worker.assignments[None], [])

    def test_taskSubclassWithOwnAcceptStillRuns(self):
        """A Task subclass whose ``accept(worker)`` is its own (as in 0.9)
        is accepted with the worker alone, and so through ``run``."""
        af = AssignmentFactory()

        class OwnAccept(Task):
            def accept(self, worker):
                self.acceptedBy = worker
                return Task.accept(self, worker)

        class Both(FakeWorker):
            def runOrWait(self, task, whenReady, arg):
                raise AssertionError("runOrWait used for an own accept")
        worker = Both()
        task = OwnAccept(plus, (1,), {}, 1.0, None)
        af.place(task)
        af.request(worker, None)
        self.assertEqual(worker.ran, [task])
        self.assertIs(task.acceptedBy, worker)

    def test_assignmentsOfNewStillGetRun(self):
        """``new``'s Assignments go through ``run`` (their Deferred
        contract), even for a worker that offers ``runOrWait``."""
        af = AssignmentFactory()

        class Both(FakeWorker):
            def runOrWait(self, task, whenReady, arg):
                raise AssertionError("runOrWait used for an Assignment")
        worker = Both()
        af.request(worker, None)
        task = makeTask()
        self.assertTrue(af.new(task).called)
        self.assertEqual(worker.ran, [task])

    def test_assignmentAccept(self):
        worker = FakeWorker()
        task = makeTask(timeout=60)
        assignment = Assignment(task)
        ready = assignment.accept(worker)
        self.assertTrue(assignment.d.called)
        self.assertIs(ready, worker.ready)
        self.assertEqual(len(Task.timeoutCalls), 1)
        task.callback((b'r', 1))
        self.assertEqual(Task.timeoutCalls, [])


class TestTaskHandler(unittest.TestCase):

    def setUp(self):
        self.th = TaskHandler()

    def test_hireRejectsNonWorkers(self):
        self.assertRaises(errors.ImplementationError, self.th.hire, object())

    def test_hireChecksInvariant(self):
        worker = ScriptedWorker()
        worker.iQualified = "not a list"
        self.assertRaises(errors.InvariantError, self.th.hire, worker)

    @defer.inlineCallbacks
    def test_hireGivesIDs(self):
        one, two = ScriptedWorker(), ScriptedWorker(series=["x"])
        self.assertEqual((yield self.th.hire(one)), 1)
        self.assertEqual((yield self.th.hire(two)), 2)
        self.assertEqual((one.ID, one.hired), (1, True))
        self.assertEqual(self.th.roster(), [one, two])
        self.assertEqual(self.th.roster("scripted"), [one, two])
        self.assertEqual(self.th.roster("x"), [two])
        self.assertEqual(
            sorted(two.assignments, key=str), sorted([None, "scripted", "x"],
                                                     key=str))

    @defer.inlineCallbacks
    def test_terminateUnknown(self):
        self.assertEqual((yield self.th.terminate(99)), [])

    @defer.inlineCallbacks
    def test_terminateGraceful(self):
        worker = ScriptedWorker()
        ID = yield self.th.hire(worker)
        self.assertEqual((yield self.th.terminate(ID)), [])
        self.assertTrue(worker.stopped)
        self.assertFalse(worker.hired)
        self.assertEqual(self.th.roster(), [])
        self.assertEqual(self.th.roster("scripted"), [])

    @defer.inlineCallbacks
    def test_terminateCrashReturnsUnfinished(self):
        worker = ScriptedWorker(hold=True)
        ID = yield self.th.hire(worker)
        task = makeTask()
        self.th(task)
        unfinished = yield self.th.terminate(ID, crash=True)
        self.assertEqual(unfinished, [task])

    @defer.inlineCallbacks
    def test_terminateReassigns(self):
        stuck, spare = ScriptedWorker(hold=True), ScriptedWorker()
        ID = yield self.th.hire(stuck)
        task = makeTask()
        self.th(task)
        yield self.th.hire(spare)
        self.assertEqual((yield self.th.terminate(ID, crash=True,
                                                  reassign=True)), [])
        self.assertEqual(spare.ran, [task])
        self.assertEqual((yield task.d), (b'r', 1))

    @defer.inlineCallbacks
    def test_stopTimeoutCrashes(self):
        class NeverStops(ScriptedWorker):
            def stop(self):
                return defer.Deferred()
        worker = NeverStops(hold=True)
        ID = yield self.th.hire(worker)
        task = makeTask()
        self.th(task)
        unfinished = yield self.th.terminate(ID, timeout=0.01)
        self.assertEqual(unfinished, [task])
        self.assertTrue(worker.crashed)

    @defer.inlineCallbacks
    def test_resignatorCrashesAndReassigns(self):
        leaving, staying = ScriptedWorker(hold=True), ScriptedWorker()
        yield self.th.hire(leaving)
        task = makeTask()
        self.th(task)
        yield self.th.hire(staying)
        yield leaving.resignator()
        self.assertEqual(self.th.roster(), [staying])
        self.assertEqual(staying.ran, [task])

    @defer.inlineCallbacks
    def test_updateRunsOnEveryWorkerAndLaterHires(self):
        one, two = ScriptedWorker(), ScriptedWorker()
        yield self.th.hire(one)
        yield self.th.hire(two)
        results = yield self.th.update(makeTask())
        self.assertEqual(results, [(b'r', 1), (b'r', 1)])
        late = ScriptedWorker()
        yield self.th.hire(late)
        self.assertEqual(len(late.ran), 1)
        yield self.th.update(makeTask(), ephemeral=True)
        yield self.th.hire(ScriptedWorker())
        self.assertEqual(len(self.th.roster()[-1].ran), 1)

    @defer.inlineCallbacks
    def test_shutdownStopsAll(self):
        workers = [ScriptedWorker() for _ in range(3)]
        for worker in workers:
            yield self.th.hire(worker)
        self.assertEqual((yield self.th.shutdown()), [])
        self.assertTrue(all(w.stopped for w in workers))
        self.assertFalse(self.th.isRunning)
