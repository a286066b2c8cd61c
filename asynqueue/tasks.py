"""
Tasks and how they reach workers: ``Task`` (one call with its priority and
Deferred), ``TaskFactory`` (the priority formula), and the hand-off from
queue to worker (``Assignment``, ``AssignmentFactory``, ``TaskHandler``).

Waiting tasks are kept per series in priority heaps, so a series whose
workers are busy or absent never holds up tasks of other series.
"""
from collections import deque

from twisted.internet import defer, reactor
from twisted.internet.defer import CancelledError
from twisted.python import log
from twisted.python.failure import Failure

from . import errors
from ._speedups import scheduler
from .info import Info
from .interfaces import IWorker, NOT_READY

__all__ = [
    "Task", "TaskFactory", "Assignment", "AssignmentFactory", "TaskHandler",
]

#: Keywords meant for the worker, not the user's function; a Task keeps
#: them so that retries and update copies get them back after a worker
#: popped them.
WORKER_KEYWORDS = ("consumer", "raw")


class Task:
    """
    One call ``f(*args, **kw)`` waiting to run, with its priority, series,
    optional timeout and the Deferred ``d`` that a worker fires with a
    ``(status, result)`` tuple.

    Tasks compare by priority (``<``, ``>``; any task sorts before None)
    but are equal only to themselves.
    """

    info = Info()
    #: The timeout timers now armed, for every task (0.9 kept this list;
    #: a timer leaves it when it is cancelled or fires).
    timeoutCalls = []
    #: Slots, so that a waiting task never carries a dict for the garbage
    #: collector to scan (an instance dict appears when other code sets
    #: attributes in another order); other attributes still go in one.
    __slots__ = (
        "_f", "_args", "_kw", "priority", "series", "timeout", "callID",
        "worker", "cancelHook", "retries", "_workerOptions", "_timer", "d",
        "callbacks", "doneHook", "doneOptions", "_waitingFor", "taken",
        "__dict__", "__weakref__")

    def __init__(self, f, args, kw, priority, series, timeout=None):
        if not isinstance(args, (tuple, list)):
            raise TypeError(
                "Task arguments must be a tuple or list, not {!r}".format(
                    type(args).__name__))
        if not isinstance(kw, dict):
            raise TypeError(
                "Task keywords must be a dict, not {!r}".format(
                    type(kw).__name__))
        self._f, self._args, self._kw = f, args, kw
        self.priority = priority
        self.series = series
        self.timeout = timeout
        self.callID = None
        #: The worker that accepted this task, once one has.
        self.worker = None
        #: Called with this task when its Deferred is cancelled.
        self.cancelHook = None
        #: How often this task was retried after each status (b't', b'd'),
        #: once it has been.
        self.retries = None
        self._workerOptions = {
            name: kw[name] for name in WORKER_KEYWORDS if name in kw} \
            if kw else None
        #: The callbacks added through ``addCallback`` (a list once there
        #: is one; most tasks have none, and share an empty tuple).
        self.callbacks = ()
        #: What turns a worker's ``(status, result)`` into the caller's
        #: result before ``d`` fires (the queue's ``taskDone``), or None.
        #: Not a callback on ``d``: that would be five more objects for the
        #: garbage collector to scan per waiting task, and bursts of calls
        #: keep thousands waiting.
        self.doneHook = None
        #: The options ``doneHook`` applies, set by the queue.
        self.doneOptions = None
        #: The Deferred of the retry that ``d`` waits for, if any.
        self._waitingFor = None
        #: Called with no arguments when I leave the AssignmentFactory's
        #: heap.
        self.taken = None
        self._timer = None
        self.d = defer.Deferred(self)

    @property
    def callTuple(self):
        """The call, as ``(f, args, kw)``; ``kw`` is the task's own dict,
        so popping from it changes the task."""
        return self._f, self._args, self._kw

    @callTuple.setter
    def callTuple(self, callTuple):
        self._f, self._args, self._kw = callTuple

    def __call__(self, d):
        """The canceller of ``d``: let the queue withdraw this task, or
        cancel the retry it waits for. (The task is its Deferred's
        canceller itself, rather than a bound method: one object fewer per
        waiting call for the garbage collector to scan.)"""
        self._cancelTimer()
        if self._waitingFor is not None:
            self._waitingFor.cancel()
        elif self.cancelHook is not None:
            self.cancelHook(self)

    def __repr__(self):
        f, args, kw = self.callTuple
        name = getattr(f, "__name__", None) if callable(f) else None
        if name is None:
            name = "<worker call {!r}>".format(f)
        parts = [repr(x) for x in args]
        parts.extend("{}={!r}".format(k, v) for k, v in kw.items())
        return "Task: {}({})".format(name, ", ".join(parts))

    def __lt__(self, other):
        if other is None:
            return True
        return self.priority < getattr(other, "priority", other)

    def __gt__(self, other):
        if other is None:
            return False
        return self.priority > getattr(other, "priority", other)

    __hash__ = object.__hash__

    def accept(self, worker, whenReady=None, arg=None):
        """A worker took me from the AssignmentFactory's heap, where a
        task the queue places waits as its own assignment: tell ``taken``,
        start my timer and return what ``worker.run`` returns. Given
        ``whenReady``, a worker with ``runOrWait`` runs me through it
        instead (no Deferred), returning None if ready at once and
        NOT_READY if it will call ``whenReady(arg)`` once it is."""
        self._leaveHeap()
        self.worker = worker
        self.startTimer()
        if whenReady is not None:
            runOrWait = getattr(worker, "runOrWait", None)
            if runOrWait is not None:
                return runOrWait(self, whenReady, arg)
        return worker.run(self)

    def withdraw(self):
        """No worker will get me: tell ``taken``."""
        self._leaveHeap()

    def _leaveHeap(self):
        """Call ``taken``, once."""
        taken = self.taken
        if taken is not None:
            self.taken = None
            taken()

    def startTimer(self):
        """Arm the timeout timer, if this task has a timeout."""
        if self.timeout and self._timer is None:
            self._timer = reactor.callLater(self.timeout, self.timedout)
            self.timeoutCalls.append(self._timer)

    def _cancelTimer(self):
        """Disarm the timeout timer, if armed."""
        timer, self._timer = self._timer, None
        if timer is not None:
            if timer.active():
                timer.cancel()
            self.timeoutCalls.remove(timer)

    def addCallback(self, f, *a, **k):
        """Add a callback to ``d`` and remember it, so that copies of this
        task get it too."""
        if not self.callbacks:
            self.callbacks = []
        self.callbacks.append((f, a, k))
        self.d.addCallback(f, *a, **k)

    def callback(self, result):
        """
        Deliver a worker's ``(status, result)``, through ``doneHook`` if
        the queue set one; ignored if the task was already resolved (timed
        out, cancelled, or waiting for its retry).
        """
        self._cancelTimer()
        if self.d.called or self._waitingFor is not None:
            return
        hook = self.doneHook
        if hook is not None:
            self.doneHook = None
            try:
                result = hook(result, self)
            except Exception:
                result = Failure()
            if _isDeferred(result):
                self._waitingFor = result
                result.addBoth(self._retried)
                return
        self.d.callback(result)

    def _retried(self, result):
        """The retry that ``d`` waited for is done: ``d`` fires with its
        outcome."""
        self._waitingFor = None
        if not self.d.called:
            self.d.callback(result)

    def errback(self, failure):
        """Fail the task, unless it was already resolved."""
        self._cancelTimer()
        if not self.d.called and self._waitingFor is None:
            self.d.errback(failure)

    def timedout(self):
        """The timer expired: resolve the task with status ``b't'``."""
        if self._timer is not None:
            self.timeoutCalls.remove(self._timer)
            self._timer = None
        self.callback(
            (b't', "Timeout after {:f} seconds".format(self.timeout)))

    def reset(self):
        """Give the task a fresh Deferred, and return it."""
        self._cancelTimer()
        self.d = defer.Deferred(self)
        return self.d

    def rush(self):
        """Make this task run before any other."""
        self.priority = scheduler.RUSH_PRIORITY

    def relax(self):
        """Make this task run after every other."""
        self.priority = scheduler.RELAX_PRIORITY

    def copy(self):
        """
        A new Task for the same call (with its own keyword dict, and the
        worker keywords restored), priority, series and timeout, with the
        callbacks added through ``addCallback`` added again.
        """
        f, args, kw = self.callTuple
        kw = dict(kw)
        kw.update(self._workerOptions or ())
        task = type(self)(f, args, kw, self.priority, self.series, self.timeout)
        task.cancelHook = self.cancelHook
        for f, a, k in self.callbacks:
            task.addCallback(f, *a, **k)
        return task


class TaskFactory:
    """
    Builds Tasks with the priority formula of AsynQueue 0.9:
    ``priority = serial(series) * (1 + ((niceness + 20)/10)**2)``, where a
    lower number runs sooner and each series numbers its tasks in order.
    """

    TaskClass = Task

    def __init__(self, klass=None):
        if klass is not None:
            self.TaskClass = klass
        self._prioritizer = scheduler.SeriesPrioritizer()

    @property
    def seriesNumbers(self):
        """The last serial number of each series seen so far."""
        return self._prioritizer.seriesNumbers

    def _serial(self, series):
        """The next serial number of ``series``, as a float."""
        return self._prioritizer.serial(series)

    def new(self, func, args, kw, niceness, series=None, timeout=None):
        """
        A new Task. Raises ValueError unless ``niceness`` is an int
        between -20 and +20.
        """
        priority = self._prioritizer.priority(niceness, series)
        return self.TaskClass(func, args, kw, priority, series, timeout)


class Assignment:
    """
    A task waiting for a worker, with a Deferred ``d`` that fires when a
    worker accepts it (made only if asked for). ``taken``, if given, is
    called when it leaves the heap.
    """

    __slots__ = ("task", "_d")

    def __init__(self, task, taken=None):
        self.task = task
        self._d = None
        task.taken = taken

    @property
    def d(self):
        """A Deferred that fires with None when a worker accepts me."""
        if self._d is _ACCEPTED:
            return defer.succeed(None)
        if self._d is None:
            self._d = defer.Deferred()
        return self._d

    def withdraw(self):
        """No worker will get me: ``d`` fails with CancelledError (quietly)
        and ``taken`` is told."""
        self.task.withdraw()
        self.d.addErrback(_dropCancelled)
        self.d.errback(Failure(CancelledError()))

    def accept(self, worker):
        """Hand the task to ``worker``: fire ``d``, start the task's timer
        and return what ``worker.run`` returns."""
        if self._d is None:
            self._d = _ACCEPTED
        else:
            self._d.callback(None)
        return self.task.accept(worker)


#: What an Assignment's ``_d`` is once accepted without anyone having asked
#: for its Deferred.
_ACCEPTED = object()


def _dropCancelled(failure):
    """Swallow the CancelledError of an assignment that was withdrawn."""
    failure.trap(CancelledError)


def _isDeferred(obj):
    """``isinstance(obj, Deferred)``, fast for what is not one: Deferred
    is an ABC (an Awaitable), slow to rule out on a per-call path."""
    return defer.Deferred in type(obj).__mro__


def _taskOf(assignment):
    """The task of an item of the heap: an Assignment, or a Task placed
    as its own assignment."""
    return assignment.task if type(assignment) is Assignment else assignment


def cancelTasks(tasks, exception):
    """Fail the Deferred of each task (of those that are Tasks) with
    ``exception``, unless already resolved; return the list."""
    for task in tasks:
        if isinstance(task, Task):
            task.errback(Failure(exception))
    return tasks


class AssignmentFactory:
    """
    Matches tasks with the requests that workers file, one request per
    worker and series. Tasks no worker can take yet wait in a priority heap
    of their series; requests no task is ready for wait first-in, first-out.

    A request is a ``(worker, series)`` tuple, listed under
    ``worker.assignments[series]`` until a task meets it. (0.9 made each
    a Deferred, which cost every call a Deferred fired with no callback.)
    """

    def __init__(self):
        #: series -> deque of requests, oldest first.
        self.waiting = {}
        #: series -> PriorityHeap of Assignments (and of Tasks placed as
        #: their own assignments).
        self.pending = {}
        self.broadcast = None
        self._dirty = deque()
        self._matching = False

    def request(self, worker, series):
        """File ``worker``'s request for a task of ``series``, listed under
        ``worker.assignments[series]`` until a task meets it."""
        request = (worker, series)
        assignments = getattr(worker, "assignments", None)
        if assignments is None:
            assignments = worker.assignments = {}
        assignments.setdefault(series, []).append(request)
        self.waiting.setdefault(series, deque()).append(request)
        if self.pending.get(series):
            self._match(series)

    def new(self, task):
        """Queue ``task`` for the next worker of its series; return a
        Deferred that fires when a worker accepts it."""
        assignment = Assignment(task)
        d = assignment.d
        self._place(assignment)
        return d

    def place(self, task, taken=None):
        """Queue ``task`` for the next worker of its series, calling
        ``taken()`` when one accepts it (or it is withdrawn). The task
        waits in the heap as its own assignment."""
        task.taken = taken
        self._place(task)

    def _place(self, assignment):
        task = _taskOf(assignment)
        series = task.series
        heap = self.pending.get(series)
        if heap is None:
            heap = self.pending[series] = scheduler.PriorityHeap()
        heap.push(assignment, task.priority)
        if self.waiting.get(series):
            self._match(series)

    def _match(self, series):
        """
        Pair waiting requests with pending assignments of ``series``. Work
        that matching triggers (a worker ready again at once, a new task
        queued by a callback) is looped over here, never recursed into.
        """
        if self._matching:
            self._dirty.append(series)
            return
        self._matching = True
        try:
            self._matchSeries(series)
            while self._dirty:
                self._matchSeries(self._dirty.popleft())
        finally:
            self._matching = False

    def _matchSeries(self, series):
        """Pair requests and assignments of one series while both wait."""
        waiting = self.waiting.get(series)
        heap = self.pending.get(series)
        while waiting and heap:
            self._accept(heap.pop(), waiting.popleft())
        self._dropIfEmpty(series, heap)

    def _dropIfEmpty(self, series, heap):
        """Forget the pending heap of ``series`` if it is ``heap`` and
        empty (callbacks run while matching may have replaced it)."""
        if heap is not None and not heap and self.pending.get(series) is heap:
            del self.pending[series]

    def _accept(self, assignment, request):
        """A request met an assignment: run it, and when the worker is ready
        again and still hired, file another request."""
        worker, series = request
        worker.assignments[series].remove(request)
        try:
            if type(assignment).accept is Task.accept:
                # A task placed as its own assignment, whose accept takes
                # the hook (a subclass may override accept as 0.9 had it).
                dReady = assignment.accept(worker, self._readyAgain, request)
            else:
                dReady = assignment.accept(worker)
        except Exception:
            dReady = defer.fail()
        if dReady is NOT_READY:
            return
        if not _isDeferred(dReady):
            self._workerReady(dReady, worker, series)
        elif dReady.called and dReady.result is None:
            # Ready at once, the common case: skip the callback machinery.
            self._workerReady(None, worker, series)
        else:
            dReady.addBoth(self._workerReady, worker, series)

    def _readyAgain(self, request):
        """A worker that ran a task through ``runOrWait`` is ready again."""
        self._workerReady(None, *request)

    def _workerReady(self, result, worker, series):
        """The worker can take another task: file a new request, if it is
        still hired. A failure of ``worker.run`` is logged."""
        if isinstance(result, Failure):
            log.err(result, "Worker {!r} failed to run a task".format(worker))
        if getattr(worker, "hired", False):
            self.request(worker, series)

    def cancelRequests(self, worker):
        """Withdraw every request of ``worker``, without firing them."""
        for series, requests in getattr(worker, "assignments", {}).items():
            waiting = self.waiting.get(series)
            for request in requests:
                if waiting is not None and request in waiting:
                    waiting.remove(request)
            del requests[:]

    def cancel(self, selector):
        """Withdraw every pending task for which ``selector(task)`` is true
        and return those tasks (their assignments fail, quietly)."""
        tasks = []
        for series, heap in list(self.pending.items()):
            for assignment in heap.cancel(lambda a: selector(_taskOf(a))):
                assignment.withdraw()
                tasks.append(_taskOf(assignment))
            self._dropIfEmpty(series, heap)
        return tasks


class TaskHandler:
    """
    Hires, fires and updates workers, and gives each task to the
    AssignmentFactory. It is the handler of the ``base.Queue``; it places
    tasks without waiting for them to be accepted (``blocking`` False).
    """

    blocking = False

    def __init__(self):
        self.isRunning = True
        self.workers = {}
        self.laborPools = {}
        self.updateTasks = []
        self.assignmentFactory = AssignmentFactory()
        self._workerCounter = 0

    def hire(self, worker):
        """
        Hire ``worker`` and return a Deferred firing with its integer ID
        once it has run the stored update tasks and filed its requests.
        Raises ImplementationError for an object that is not an IWorker,
        and InvariantError for bad qualification lists.
        """
        if not IWorker.providedBy(worker):
            raise errors.ImplementationError(
                "{!r} does not provide IWorker; it cannot be hired".format(
                    worker))
        IWorker.validateInvariants(worker)
        self._workerCounter += 1
        ID = self._workerCounter
        worker.hired = True
        worker.assignments = {}
        worker.ID = ID
        self.workers[ID] = worker
        worker.setResignator(self._resignator(ID))
        return self._startWorker(worker, ID)

    def _resignator(self, ID):
        """What a worker calls to quit on its own: crash it, reassigning
        its unfinished tasks."""
        def resign():
            return self.terminate(ID, crash=True, reassign=True)
        return resign

    @staticmethod
    def qualifications(worker):
        """The series ``worker`` qualifies for, None first, each once."""
        series = [None]
        for name in worker.cQualified + worker.iQualified:
            if name not in series:
                series.append(name)
        return series

    @defer.inlineCallbacks
    def _startWorker(self, worker, ID):
        """Replay stored updates on a new worker, then file its requests."""
        qualifications = self.qualifications(worker)
        for task in list(self.updateTasks):
            if task.series in qualifications and worker.hired:
                yield worker.run(self._updateCopy(task, worker, False))
        if worker.hired:
            for series in qualifications:
                self.addToPool(worker, series)
        return ID

    def addToPool(self, worker, series):
        """Make ``worker`` take tasks of ``series`` from now on."""
        if series is not None:
            pool = self.laborPools.setdefault(series, [])
            if worker in pool:
                return
            pool.append(worker)
        self.assignmentFactory.request(worker, series)

    def terminate(self, workerID, timeout=None, crash=False, reassign=False):
        """
        Fire the worker with ``workerID``. Returns a Deferred firing with
        its unfinished tasks (``[]`` when they were reassigned or when the
        ID is unknown). Without ``crash`` the worker is stopped gracefully,
        and crashed if ``timeout`` seconds pass first.
        """
        worker = self.workers.pop(workerID, None)
        if worker is None:
            return defer.succeed([])
        worker.hired = False
        self.assignmentFactory.cancelRequests(worker)
        for pool in self.laborPools.values():
            if worker in pool:
                pool.remove(worker)
        if crash:
            d = defer.succeed(list(worker.crash() or []))
        else:
            d = self._stop(worker, timeout)
        if reassign:
            d.addCallback(self._reassign)
        return d

    def _stop(self, worker, timeout):
        """Stop ``worker``; crash it if ``timeout`` expires first."""
        result = defer.Deferred()

        def crashed():
            if not result.called:
                result.callback(list(worker.crash() or []))

        def stopped(outcome):
            if timer is not None and timer.active():
                timer.cancel()
            if isinstance(outcome, Failure):
                log.err(outcome, "Stopping worker {!r}".format(worker))
            if not result.called:
                result.callback([])

        timer = reactor.callLater(timeout, crashed) if timeout else None
        defer.maybeDeferred(worker.stop).addBoth(stopped)
        return result

    def _reassign(self, tasks):
        """Queue unfinished tasks again for other workers."""
        for task in tasks:
            self.assignmentFactory.new(task)
        return []

    def shutdown(self, timeout=None):
        """Terminate every worker (gracefully, within ``timeout``); fire with
        the flattened list of their unfinished tasks."""
        self.isRunning = False
        dList = [self.terminate(ID, timeout) for ID in list(self.workers)]
        return defer.gatherResults(dList, consumeErrors=True).addCallback(
            lambda lists: [task for tasks in lists for task in tasks])

    def roster(self, series=None):
        """Every worker, or the workers qualified for ``series``."""
        if series is None:
            return list(self.workers.values())
        return list(self.laborPools.get(series, []))

    def update(self, task, ephemeral=False):
        """
        Run a copy of ``task`` on every worker qualified for its series,
        bypassing the queue; unless ``ephemeral``, also on workers hired
        later. Fires with the list of results.
        """
        if not ephemeral:
            self.updateTasks.append(task)
        dList = []
        for worker in self.roster(task.series):
            copy = self._updateCopy(task, worker, ephemeral)
            dList.append(copy.d)
            worker.run(copy)
        return defer.gatherResults(dList, consumeErrors=True)

    @staticmethod
    def _updateCopy(task, worker, ephemeral):
        """A copy of an update task for ``worker``, marked so that a worker
        that replaces its resources (a process worker's new child) can run
        persistent updates again."""
        copy = task.copy()
        copy.worker = worker
        copy.updateMode = "ephemeral" if ephemeral else "persistent"
        return copy

    def cancel(self, selector):
        """Withdraw the waiting tasks ``selector`` picks; return them."""
        return self.assignmentFactory.cancel(selector)

    def __call__(self, task):
        """Place ``task`` for a worker; fires when one accepts it."""
        return self.assignmentFactory.new(task)

    def place(self, task, taken):
        """Place ``task`` for a worker; ``taken()`` is called when one
        accepts it or it is withdrawn (the Queue's cheaper way)."""
        self.assignmentFactory.place(task, taken)
