"""
The queue itself: ``TaskQueue``, the main user API, on top of ``Queue``
(the dispatch loop), ``Priority`` (an asynchronous heap) and
``LoadInfoProducer`` (reports how many tasks wait).

Errors follow AsynQueue 0.9's policy by default (see ``TaskQueue``); new
code should pass ``returnFailure=True`` and get errbacks instead.
"""
import logging
import sys

from twisted.internet import defer, reactor
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.python import log
from twisted.python.failure import Failure
from zope.interface import implementer

from . import errors
from ._speedups import scheduler
from .info import Info
from .tasks import Task, TaskFactory, TaskHandler, cancelTasks

__all__ = ["Priority", "LoadInfoProducer", "Queue", "TaskQueue"]

#: The options (returnFailure, consumer, call ID) of most tasks, shared
#: rather than made per task (one object less for the garbage collector).
_SHARED_OPTIONS = {False: (False, None, None), True: (True, None, None)}
#: How long after an error (with the default policy) the reactor stops.
ERROR_STOP_DELAY = 1.0
#: Statuses retried once before the task is given up.
RETRIED_STATUSES = {
    b't': lambda task, text: errors.TimeoutError(
        "Timed out after two tries, gave up"),
    b'd': lambda task, text: errors.WorkerError(
        "Lost the worker running {!r} twice, gave up: {}".format(task, text)),
}


class Priority:
    """
    An asynchronous min-heap: ``get()`` returns a Deferred that fires with
    the lowest item as soon as there is one. Tasks are keyed by their
    priority number, other items by themselves; None sorts last.
    """

    def __init__(self):
        self.heap = scheduler.PriorityHeap()
        self.pendingGetCalls = []

    def shutdown(self):
        """Fail every pending ``get()`` with QueueRunError."""
        getters, self.pendingGetCalls = self.pendingGetCalls, []
        for d in getters:
            d.errback(Failure(errors.QueueRunError(
                "No more items forthcoming")))

    def get(self):
        """A Deferred that fires with the lowest item, now or once one is
        put. Waiting getters are served first-come, first-served."""
        if self.heap:
            return defer.succeed(self.heap.pop())
        d = defer.Deferred()
        self.pendingGetCalls.insert(0, d)
        return d

    def put(self, item):
        """Add ``item``; serve the oldest waiting getter, if any."""
        if isinstance(item, Task):
            self.heap.push(item, item.priority)
        else:
            self.heap.push(item)
        if self.pendingGetCalls:
            self.pendingGetCalls.pop().callback(self.heap.pop())

    def cancel(self, selector, exception=None):
        """
        Remove every item for which ``selector(item)`` is true, fail the
        Deferreds of removed tasks with ``exception`` (by default
        CancelledError), and return the removed items.
        """
        return cancelTasks(
            self.heap.cancel(selector), exception or CancelledError())


@implementer(IPushProducer)
class LoadInfoProducer:
    """
    Writes the number of tasks waiting for a worker (an int) to each
    registered consumer whenever it changes.
    """

    def __init__(self):
        self.queued = 0
        self.producing = True
        self.consumers = []

    def registerConsumer(self, consumer):
        """Register with ``consumer`` as a push producer; a consumer that
        already has a producer is ignored."""
        try:
            consumer.registerProducer(self, True)
        except RuntimeError:
            return
        self.consumers.append(consumer)

    def shutdown(self):
        """Stop producing and unregister from every consumer."""
        self.stopProducing()

    def oneLess(self):
        """One task fewer is waiting."""
        self._change(-1)

    def oneMore(self):
        """One task more is waiting."""
        self._change(+1)

    def _change(self, increment):
        """Adjust the count (never below 0) and report it."""
        queued = self.queued + increment
        self.queued = queued if queued > 0 else 0
        if self.producing:
            for consumer in self.consumers:
                consumer.write(self.queued)

    def pauseProducing(self):
        self.producing = False

    def resumeProducing(self):
        self.producing = True

    def stopProducing(self):
        self.producing = False
        consumers, self.consumers = self.consumers, []
        for consumer in consumers:
            consumer.unregisterProducer()


class _Nothing:
    """Marks "no item in hand" in the dispatch loop."""


class Queue:
    """
    The dispatch loop: items put here go, lowest first, to
    ``handler(item)``, which returns a Deferred. A handler whose
    ``blocking`` attribute is false (``TaskHandler``) takes items as fast
    as they come and fires its Deferred when the item is taken up; for any
    other handler the loop waits for that Deferred before the next item,
    as in 0.9. ``shutdown()`` ends the loop after the items already queued,
    then calls ``handler.shutdown(timeout)``.
    """

    def __init__(self, handler, timeout=None):
        self.handler = handler
        self.timeout = timeout
        self.heap = Priority()
        self.loadInfoProducer = LoadInfoProducer()
        self._blocking = getattr(handler, "blocking", True)
        self._place = None if self._blocking else \
            getattr(handler, "place", None)
        # Bound once, not per item: each bound method is an object to make
        # and, for the garbage collector, to track while its task waits.
        self._oneLess = self.loadInfoProducer.oneLess
        self._result = None
        self._shutdownWaiters = []
        self._runFlag = True
        self._idle = False
        self._loop()

    def isRunning(self):
        """True until shutdown."""
        return self._runFlag

    def _loop(self, item=_Nothing):
        """Hand items to the handler until the None sentinel comes up."""
        heap = self.heap.heap
        while True:
            if item is _Nothing:
                if not heap:
                    self._idle = True
                    self.heap.get().addCallbacks(self._loop, self._loopFailed)
                    return
                item = heap.pop()
            self._idle = False
            if item is None:
                self._finish()
                return
            d = self._dispatch(item)
            item = _Nothing
            if d is not None:
                d.addBoth(self._resume)
                return

    def _dispatch(self, item):
        """Give one item to the handler; return a Deferred to wait for, or
        None to go on at once."""
        if self._blocking:
            self.loadInfoProducer.oneLess()
            d = defer.maybeDeferred(self.handler, item)
            if not d.called:
                return d
            d.addErrback(self._handlerFailed)
            return None
        if self._place is not None:
            self._place(item, self._oneLess)
            return None
        d = self.handler(item)
        if d.called:
            self.loadInfoProducer.oneLess()
        else:
            d.addBoth(self._taken)
        return None

    def _resume(self, result):
        """A blocking handler finished an item: go on with the next."""
        if isinstance(result, Failure):
            self._handlerFailed(result)
        self._loop()

    def _taken(self, _):
        """A non-blocking handler's item was taken up (or withdrawn)."""
        self.loadInfoProducer.oneLess()

    def _handlerFailed(self, failure):
        log.err(failure, "Queue handler failed")

    def _loopFailed(self, failure):
        log.err(failure, "Queue loop stopped")

    def _finish(self):
        """The loop ended: shut down the handler and the heap, then tell
        everyone waiting in ``shutdown()``."""
        d = defer.maybeDeferred(self.handler.shutdown, self.timeout)
        d.addBoth(self._finished)

    def _finished(self, result):
        self.heap.shutdown()
        self.loadInfoProducer.shutdown()
        if isinstance(result, Failure):
            log.err(result, "Queue handler shutdown")
            result = []
        self._result = result
        waiters, self._shutdownWaiters = self._shutdownWaiters, None
        for d in waiters:
            d.callback(result)

    def shutdown(self):
        """
        End the loop after the items already queued. Fires with the list
        of unfinished tasks from the handler's shutdown (``[]`` if the queue
        was not running).
        """
        if self._shutdownWaiters is None:
            return defer.succeed(self._result)
        if not self._runFlag:
            d = defer.Deferred()
            self._shutdownWaiters.append(d)
            return d
        self._runFlag = False
        d = defer.Deferred()
        self._shutdownWaiters.append(d)
        self.heap.put(None)
        return d

    def put(self, item):
        """Queue ``item``. While the loop waits for items and the handler
        takes them as they come, it goes to the handler at once."""
        self.loadInfoProducer.oneMore()
        if self._idle and item is not None and not self._blocking:
            self._dispatch(item)
        else:
            self.heap.put(item)

    def cancel(self, selector, exception=None):
        """
        Withdraw every waiting item (queued here or waiting in the handler
        for a worker) for which ``selector(item)`` is true; the Deferreds of
        withdrawn tasks fail with ``exception`` (by default CancelledError).
        Returns the withdrawn items.
        """
        def select(item):
            return item is not None and selector(item)
        exception = exception or CancelledError()
        removed = self.heap.cancel(select, exception)
        for _ in removed:
            self.loadInfoProducer.oneLess()
        handlerCancel = getattr(self.handler, "cancel", None)
        if handlerCancel is not None:
            removed.extend(cancelTasks(handlerCancel(select), exception))
        return removed

    def cancelSeries(self, series):
        """Withdraw every waiting task of ``series``."""
        return self.cancel(lambda item: _seriesOf(item) == series)

    def cancelAll(self):
        """Withdraw every waiting task."""
        return self.cancel(lambda item: True)

    def subscribe(self, consumer):
        """Have the number of waiting tasks written to ``consumer`` as it
        changes. Raises ImplementationError unless it is an IConsumer."""
        if not IConsumer.providedBy(consumer):
            raise errors.ImplementationError(
                "{!r} does not provide IConsumer".format(consumer))
        self.loadInfoProducer.registerConsumer(consumer)


def _seriesOf(item):
    """The series of a task, or a marker no series equals."""
    return getattr(item, "series", _Nothing)


class TaskQueue:
    """
    A queue of tasks run by the workers attached to it, lowest priority
    number first.

    Positional arguments are workers to attach. Keywords (others are
    ignored, as in 0.9): ``timeout`` (seconds a worker may take to stop
    when detached or at shutdown before it is crashed), ``warn``,
    ``verbose``, ``spew`` and ``returnFailure``.

    Error policy (kept from 0.9 because code depends on it): by default a
    task's error text comes back as its *successful* result, "ERROR: ..."
    is written to stderr, and the reactor stops one second later. With
    ``warn=True`` the error is logged on the ``asynqueue`` logger instead
    of stopping the reactor. With ``returnFailure=True`` (recommended, also
    per call) the Deferred fails with ``WorkerError(text)``.
    """

    def __init__(self, *args, **kw):
        self.timeout = kw.get("timeout", None)
        self.warn = kw.get("warn", False)
        self.spew = kw.get("spew", False)
        self.returnFailure = kw.get("returnFailure", False)
        if self.warn or self.spew:
            self.logger = _setupLogger(self.spew)
        if kw.get("verbose", False) or self.spew:
            self.info = Info(remember=True)
        self.tasksBeingRetried = []
        self._shutdownInitiated = False
        self._dc = None
        # Bound once, not per task (see Queue.__init__).
        self._cancelHook = self._cancelTask
        self._taskDoneHook = self._taskDone
        self.th = TaskHandler()
        self.taskFactory = TaskFactory()
        self.q = Queue(self.th, timeout=self.timeout)
        for worker in args:
            self.attachWorker(worker)

    def __len__(self):
        """The number of attached workers."""
        return len(self.th.roster())

    def __bool__(self):
        """True while running with at least one worker."""
        return bool(self.isRunning() and len(self))

    def isRunning(self):
        """False once shutdown has started."""
        if self._shutdownInitiated:
            return False
        return self.th.isRunning and self.q.isRunning()

    # --- Workers -------------------------------------------------------

    def attachWorker(self, worker):
        """Attach ``worker``; fires with its integer ID."""
        return self.th.hire(worker)

    def detachWorker(self, workerOrID, reassign=False, crash=False):
        """
        Detach a worker (given itself or by ID). Fires with its unfinished
        tasks, or ``[]`` if they were reassigned or the worker is unknown.
        """
        ID = self._workerID(workerOrID)
        if ID is None:
            return defer.succeed([])
        if crash:
            return self.th.terminate(ID, crash=True, reassign=reassign)
        return self.th.terminate(ID, self.timeout, reassign=reassign)

    def _workerID(self, workerOrID):
        """The ID of an attached worker, or None."""
        if isinstance(workerOrID, int) and not isinstance(workerOrID, bool):
            return workerOrID if workerOrID in self.th.workers else None
        for ID, worker in self.th.workers.items():
            if worker is workerOrID or worker == workerOrID:
                return ID
        return None

    def qualifyWorker(self, worker, series):
        """Have ``worker`` (attached) take tasks of ``series`` too."""
        if series not in worker.iQualified:
            worker.iQualified.append(series)
            if getattr(worker, "hired", False):
                self.th.addToPool(worker, series)

    def workers(self, ID=None):
        """The attached workers, or the one with ``ID`` (None if none)."""
        if ID is None:
            return self.th.roster()
        return self.th.workers.get(ID, None)

    # --- Calls ---------------------------------------------------------

    def call(self, func, *args, **kw):
        """
        Queue ``func(*args, **kw)`` and return a Deferred of its result.

        Queue keywords, never passed to ``func``: ``niceness`` (-20..20,
        default 0), ``series``, ``timeout`` (seconds once running; retried
        once, then TimeoutError), ``doNext``, ``doLast``, ``returnFailure``;
        and for the worker: ``consumer`` (an IConsumer that receives the
        items of an iterator result) and ``raw`` (return iterators as they
        are). Raises QueueRunError, naming the call, if the queue is not
        running.
        """
        if not self.isRunning():
            raise errors.QueueRunError(
                "Queue not running, can't do " +
                Info().setCall(func, args, kw).aboutCall())
        task = self.newTask(func, args, kw)
        d = task.d
        self.q.put(task)
        return d

    def newTask(self, func, args, kw, recorded=False):
        """
        Build a Task from a call, taking the queue keywords out of ``kw``;
        its outcome goes through ``taskDone`` (as its ``doneHook``, or, if
        ``recorded``, as a callback recorded for copies).
        """
        niceness = kw.pop("niceness", 0)
        series = kw.pop("series", None)
        timeout = kw.pop("timeout", None)
        doNext = kw.pop("doNext", False)
        doLast = kw.pop("doLast", False)
        rf = kw.pop("returnFailure", self.returnFailure)
        task = self.taskFactory.new(func, args, kw, niceness, series, timeout)
        if doNext:
            task.rush()
        elif doLast:
            task.relax()
        ID = self.info.setCall(func, args, kw).ID \
            if hasattr(self, "info") else None
        task.cancelHook = self._cancelHook
        consumer = kw.get("consumer", None)
        task.doneOptions = _SHARED_OPTIONS[rf] \
            if consumer is None and ID is None and type(rf) is bool \
            else (rf, consumer, ID)
        if recorded:
            task.addCallback(self._taskDoneHook, task)
        else:
            task.doneHook = self._taskDoneHook
        return task

    def update(self, func, *args, **kw):
        """
        Run ``func(*args, **kw)`` on every worker qualified for its series
        (and, unless ``ephemeral=True``, on workers attached later),
        bypassing the queue. Fires with a list of their results.
        """
        if "consumer" in kw:
            raise ValueError(
                "update() cannot take a consumer: its results come back "
                "as a list, one per worker")
        ephemeral = kw.pop("ephemeral", False)
        task = self.newTask(func, args, kw, recorded=True)
        return self.th.update(task, ephemeral)

    def _cancelTask(self, task):
        """A task's Deferred was cancelled: withdraw it if it waits, or ask
        its worker to abandon it if running."""
        if not self.q.cancel(lambda item: item is task):
            _abandon(task)

    def cancelSeries(self, series):
        """Withdraw every waiting task of ``series``; their Deferreds fail
        with CancelledError. Returns the tasks."""
        return self.q.cancelSeries(series)

    def cancelAll(self):
        """Withdraw every waiting task; their Deferreds fail with
        CancelledError. Returns the tasks."""
        return self.q.cancelAll()

    def subscribe(self, consumer):
        """Have the number of waiting tasks written to ``consumer``."""
        self.q.subscribe(consumer)

    # --- Results -------------------------------------------------------

    def _taskDone(self, statusResult, task):
        """``taskDone`` with the options the task was made with; a plain
        result goes straight through."""
        if statusResult[0] == b'r' and task.doneOptions[2] is None:
            return statusResult[1]
        rf, consumer, ID = task.doneOptions
        return self.taskDone(
            statusResult, task, rf=rf, consumer=consumer, ID=ID)

    def taskDone(self, statusResult, task, **kw):
        """Turn a worker's ``(status, result)`` into the caller's result."""
        status, result = statusResult
        ID = kw.get("ID", None)
        if status in (b'r', b'c'):
            pass
        elif status == b'i':
            result = self._iterationResult(result, kw.get("consumer", None))
        elif status == b'e':
            result = self._handleError(result, ID, kw.get("rf", False))
        elif status == b'n':
            result = None
        elif status in RETRIED_STATUSES:
            return self._retryOrGiveUp(task, status, result)
        else:
            result = Failure(errors.WorkerError(
                "Unknown status {!r}".format(status)))
        if ID is not None:
            if self.spew:
                self.logger.info("{} -> {!r}".format(
                    self.info.aboutCall(ID), result))
            self.info.forgetID(ID)
        return result

    @staticmethod
    def _iterationResult(result, consumer):
        """An iteration result: as it is, or run into the consumer."""
        if consumer is None:
            return result
        if hasattr(result, "run"):
            return result.run()
        return None

    def _handleError(self, text, ID, returnFailure):
        """Apply the error policy to a task's error text."""
        if hasattr(self, "logger"):
            prefix = self.info.aboutCall(ID) if ID is not None else "TASK"
            self.logger.error("{}: {}".format(prefix, text))
        if returnFailure:
            return Failure(errors.WorkerError(text))
        if not self.warn:
            sys.stderr.write("\nERROR: {}".format(text))
            sys.stderr.write("\nShutting down in one second!\n")
            if self._dc is None or not self._dc.active():
                self._dc = reactor.callLater(ERROR_STOP_DELAY, reactor.stop)
        return text

    def _retryOrGiveUp(self, task, status, text=None):
        """Retry a task once per status; fail it the second time. A timed
        out task's worker is asked to abandon it first."""
        if status == b't':
            _abandon(task)
        count = (task.retries or {}).get(status, 0)
        if count >= 1:
            return Failure(RETRIED_STATUSES[status](task, text))
        return self.retryTask(task, status)

    def retryTask(self, task, status=b't'):
        """
        Queue a copy of ``task`` to run next, and return its Deferred; the
        original's late result, if any, is ignored.
        """
        retry = task.copy()
        retry.retries = dict(task.retries or {})
        retry.retries[status] = retry.retries.get(status, 0) + 1
        retry.rush()
        retry.doneOptions = task.doneOptions
        self.tasksBeingRetried.append(retry)
        d = retry.d
        d.addCallback(self._taskDoneHook, retry)
        d.addBoth(self._retryFinished, retry)
        self.q.put(retry)
        return d

    def _retryFinished(self, result, retry):
        self.tasksBeingRetried.remove(retry)
        return result

    # --- Shutdown ------------------------------------------------------

    @defer.inlineCallbacks
    def shutdown(self):
        """
        Stop every worker (crashing those that take longer than the
        queue's ``timeout``), end the queue, and fail the tasks still
        waiting with QueueRunError. Fires when done.
        """
        if not self._shutdownInitiated:
            self._shutdownInitiated = True
            unfinished = yield _logged(
                self.th.shutdown(self.timeout), "Stopping the workers")
            yield _logged(self.q.shutdown(), "Ending the queue")
            exception = errors.QueueRunError(
                "The queue shut down before this task finished")
            cancelTasks(unfinished or [], exception)
            self.q.cancel(lambda item: True, exception)
        if self._dc is not None and self._dc.active():
            self._dc.cancel()


def _abandon(task):
    """Ask the worker running ``task``, if it can, to abandon it (a process
    worker kills and replaces its child)."""
    cancelTask = getattr(task.worker, "cancelTask", None)
    if cancelTask is not None:
        cancelTask(task)


def _logged(d, doing):
    """Log a failure of ``d`` (what we were ``doing``) and fire None
    instead."""
    return d.addErrback(lambda failure: log.err(failure, doing))


def _setupLogger(spew):
    """The ``asynqueue`` logger, with a stdout handler if the application
    gave it none, at INFO when spewing, else ERROR."""
    logger = logging.getLogger("asynqueue")
    if not logger.hasHandlers():
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if spew else logging.ERROR)
    return logger
