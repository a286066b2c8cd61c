"""
Process workers: ``ProcessQueue`` and ``ProcessWorker`` run calls in child
Python processes, one per core, over private pipes that the reactor watches,
with large buffers (numpy arrays) carried through shared memory.

A child that dies is replaced at once and its calls run again elsewhere;
see DESIGN.md, "Process workers: how a call travels".
"""
import os
import pickle
import re
import sys
import time
import weakref
from collections import deque
from itertools import count

from twisted.internet import defer, reactor
from twisted.python import log
from twisted.python.failure import Failure
from zope.interface import implementer

from . import child as wire
from . import errors
from ._speedups import framing
from .base import TaskQueue
from .child import ProcessUniverse
from .childprocess import (
    Call, ChildProcess, RemoteIterator, childEnvironment, exitText)
from .interfaces import IWorker, NOT_READY
from .iteration import Deferator
from .arena import CallArena
from .shm import closeAllOwned, sweepOrphans
from .workers import iterationResult, popWorkerOptions

__all__ = ["ProcessQueue", "ProcessWorker", "ProcessUniverse", "ProcessBase"]

#: Calls each worker keeps in flight by default. In the tiny-call benchmark
#: 8 or 16 gained at most a few percent over 4, within the noise, while
#: every call in flight is one whose order was fixed before it could run;
#: so 4, and the ``pipelining`` keyword for those who want more.
PIPELINING = 4
#: Consecutive children that may end before they start serving calls
#: before the worker gives up and resigns.
MAX_SILENT_DEATHS = 3
#: Main-side and child-side call times kept for ``stats()`` at most.
MAX_STATS = 100000


@implementer(IWorker)
class ProcessWorker:
    """
    Runs tasks in a child Python process of its own, started with
    ``reactor.spawnProcess`` (a fresh interpreter that sees our
    ``sys.path``, working directory and environment).

    Calls, arguments and results must pickle (functions of ``__main__``,
    lambdas and closures go by value through cloudpickle). Buffers of
    ``shmThreshold`` bytes or more travel through shared memory. Up to
    ``pipelining`` calls are in flight at once. With ``maxTasks``, the
    child is replaced after that many calls. ``python`` and ``env`` choose
    the child's interpreter and environment. A child that dies is replaced
    at once; the call it was running is retried once (status ``b'd'``),
    failing with WorkerError if it kills a second child, and the calls
    queued behind it run on the new child.
    """

    cQualified = ["process", "local"]
    #: Kept from 0.9, where it tuned the polling of the pipe (gone now).
    backoff = 1.10
    reVmSize = re.compile(r"VmSize:\s+([0-9]+)")

    @staticmethod
    def cores():
        """The number of CPU cores available."""
        return os.cpu_count() or 1

    def __init__(self, series=[], raw=False, callStats=False,
                 useReactor=False, pipelining=PIPELINING,
                 shmThreshold=framing.DEFAULT_THRESHOLD, maxTasks=None,
                 python=None, env=None, iterationBatch=wire.DEFAULT_BATCH):
        _checkCount("pipelining", pipelining)
        _checkCount("shmThreshold", shmThreshold)
        _checkCount("iterationBatch", iterationBatch)
        if maxTasks is not None:
            _checkCount("maxTasks", maxTasks)
        self.iQualified = list(series)
        self.raw = raw
        self.callStats = callStats
        self.pipelining = pipelining
        self.shmThreshold = shmThreshold
        self.maxTasks = maxTasks
        self.iterationBatch = iterationBatch
        self.python = python or sys.executable
        self.env = childEnvironment(env)
        self.callTimes = deque(maxlen=MAX_STATS) if callStats else None
        sweepOrphans()
        self.arena = CallArena()
        self.children = []
        self._requestIDs = count(1)
        self._readyWaiters = deque()
        self._updates = []
        self._silentDeaths = 0
        self._callsInFlight = 0
        self._resignator = None
        self._stopping = False
        self._dStopped = None
        self.child = self._spawn()

    def __repr__(self):
        return "<ProcessWorker {} ({!r})>".format(
            getattr(self, "ID", "?"), self.child)

    @property
    def process(self):
        """The child process now running calls (``pid``, ``is_alive()``,
        ``join()``)."""
        return self.child

    @property
    def tasks(self):
        """The tasks handed to me and not yet finished."""
        return [call.task for child in self.children
                for call in child.pending.values() if call.task is not None]

    # --- Children ------------------------------------------------------

    def _spawn(self):
        """Start a child and send it the persistent updates."""
        args = [self.python, "-m", "asynqueue.child",
                "1" if self.raw else "0", "1" if self.callStats else "0",
                str(self.shmThreshold), str(os.getpid())]
        child = ChildProcess(self, args, self.env)
        self.children.append(child)
        for update in self._updates:
            raw, f, args, kw = update
            self._sendTo(child, Call(None, raw, None, update), f, args, kw)
        return child

    def _replace(self):
        """Send new calls to a fresh child from now on."""
        self.child = self._spawn()

    def childEnded(self, child, reason):
        """A child ended: rescue its calls, and replace it if it was the
        one running them."""
        self.children.remove(child)
        fetches, child.fetches = child.fetches, {}
        for d in fetches.values():
            d.errback(child.lostIterator(reason))
        calls = self._rescue(child)
        if not self._stopping:
            self._silentDeaths = 0 if child.ready else self._silentDeaths + 1
            if self._silentDeaths >= MAX_SILENT_DEATHS:
                return self._giveUp(child, calls, reason)
        if not self.child.is_alive() and (calls or not self._stopping):
            self._replace()
        if calls and child.ready and not child.abandoning:
            self._blame(child, calls.pop(0), reason)
        self._resend([call for call in calls if call.task is not None])
        if self._stopping:
            self._checkStopped()

    def _rescue(self, child):
        """Take an ended child's calls; return those not abandoned, in the
        order they were sent."""
        pending, child.pending = child.pending, {}
        self._callsInFlight -= len(pending)
        self.arena.releaseBorrower(child)
        return [call for call in pending.values() if not call.abandoned]

    def _blame(self, child, call, reason):
        """``call`` was running when ``child`` died. An update is never
        replayed again. A task is reported with status ``b'd'``, so that
        the queue retries it once; if it has killed a child before, it
        fails, saying how."""
        text = "Worker process {} died ({}) while running {!r}".format(
            child.pid, exitText(reason), call.task or call.update[1])
        if call.update is not None:
            self._updates = [u for u in self._updates if u is not call.update]
        task = call.task
        if task is None:
            log.msg(text)
        elif (getattr(task, "retries", None) or {}).get(b'd'):
            task.errback(Failure(errors.WorkerError(
                text + ", the second worker process it killed; gave up")))
        else:
            task.callback((b'd', text))

    def _giveUp(self, child, calls, reason):
        """Children keep ending before they serve (a bad ``python`` or
        ``env``?): fail the calls and resign."""
        text = "{!r} resigns: {} worker processes in a row ended before " \
            "serving, the last one {} ({})".format(
                self, self._silentDeaths, child.pid, exitText(reason))
        log.msg(text)
        self._stopping = True
        for call in calls:
            if call.task is not None:
                call.task.errback(Failure(errors.WorkerError(text)))
        if self._resignator is not None:
            self._resignator()
        self._checkStopped()

    def _resend(self, calls):
        for call in calls:
            f, args, kw = call.task.callTuple
            self._sendTo(self.child, call, f, args, kw)

    # --- IWorker -------------------------------------------------------

    def setResignator(self, callableObject):
        self._resignator = callableObject

    def run(self, task):
        """Send ``task`` to the child; fires when I can take another."""
        d = defer.Deferred()
        if self.runOrWait(task, d.callback, None) is not NOT_READY:
            d.callback(None)
        return d

    def runOrWait(self, task, whenReady, arg):
        """``run`` without a Deferred: send ``task``; None if I can take
        another at once, else NOT_READY, and ``whenReady(arg)`` is called
        once I can."""
        raw, consumer, vip = popWorkerOptions(task, self.raw)
        f, args, kw = task.callTuple
        call = Call(task, raw, consumer)
        if getattr(task, "updateMode", None) == "persistent":
            call.update = (raw, f, args, kw)
            self._updates.append(call.update)
        self._sendTo(self.child, call, f, args, kw)
        if self._inFlight() < self.pipelining:
            return None
        self._readyWaiters.append((whenReady, arg))
        return NOT_READY

    def _inFlight(self):
        return self._callsInFlight

    def _sendTo(self, child, call, f, args, kw):
        """Send a call, or fail its task at once if it cannot be sent."""
        if self.maxTasks and child.calls >= self.maxTasks and \
                child is self.child and not self._stopping:
            self._replace()
            self._retireIfIdle(child)
            child = self.child
        try:
            child.send(next(self._requestIDs) & 0xFFFFFFFF, call, f, args, kw)
            self._callsInFlight += 1
        except Exception as error:
            if call.task is not None:
                call.task.callback((b'e', "Can't send {!r} to a worker "
                                    "process: {}".format(call.task, error)))
            self._slotFreed()

    def frameReceived(self, child, frame):
        """Act on a frame from one of my children."""
        kind = frame.kind
        if kind == wire.RESULT:
            self._resultReceived(child, frame)
        elif kind == wire.ITEMS:
            d = child.fetches.pop(frame.requestID, None)
            reply = pickle.loads(
                frame.payload, buffers=child.replyBuffers(frame))
            if d is not None:
                d.callback(reply)
        elif kind == wire.READY:
            child.ready = True
        elif kind == wire.WANT_ARENA:
            child.growReplyArena(pickle.loads(frame.payload))
        elif kind == wire.ARENA_ACK:
            child.replyArenaAcknowledged(pickle.loads(frame.payload))
        else:
            raise framing.ProtocolError("unknown frame kind {}".format(kind))

    def _resultReceived(self, child, frame):
        call = child.pending.pop(frame.requestID, None)
        buffers = child.replyBuffers(frame)
        if call is None:
            return
        self._callsInFlight -= 1
        try:
            status, result, seconds = pickle.loads(
                frame.payload, buffers=buffers)
        except Exception as error:
            status, seconds = b'e', None
            result = "Can't load the result of {!r}: {}".format(
                call.task, error)
        if self.callTimes is not None:
            self.callTimes.append((time.perf_counter() - call.sent, seconds))
        if call.task is not None:
            if status == b'i':
                status, result = self._iteration(child, result, call)
            call.task.callback((status, result))
        self._slotFreed()
        self._retireIfIdle(child)

    def _iteration(self, child, ID, call):
        """An iterator result: a Deferator fetching from the child (or an
        IterationProducer with a consumer), or ``[]`` if it was empty."""
        if ID is None:
            return b'i', []
        remote = RemoteIterator(self, child, ID)
        child.iterators.add(ID)
        dr = Deferator(
            "iterator {} of {!r}".format(ID, child), remote.getNext)
        dr.d.addBoth(remote.drop)
        weakref.finalize(dr, reactor.callFromThread, remote.drop)
        return iterationResult(dr, call.consumer)

    def iteratorEnded(self, child, ID):
        child.iterators.discard(ID)
        self._retireIfIdle(child)

    def _retireIfIdle(self, child):
        """Let a child that gets no more calls (see ``maxTasks``) exit once
        it has replied to all and holds no iterator."""
        if child is not self.child and not child.pending and \
                not child.iterators and child.is_alive():
            child.finish()

    def fetch(self, remote):
        """A batch of a remote iterator's items."""
        return remote.child.fetch(
            next(self._requestIDs) & 0xFFFFFFFF, remote.ID,
            self.iterationBatch)

    def _slotFreed(self):
        """A call finished: let a waiting request through."""
        if self._readyWaiters and self._inFlight() < self.pipelining:
            self._wake(*self._readyWaiters.popleft())
        if self._stopping:
            self._checkStopped()

    @staticmethod
    def _wake(whenReady, arg):
        """Tell a waiter I can take another task; what it raises is logged
        (it must not reach the pipe's reader)."""
        try:
            whenReady(arg)
        except Exception:
            log.err(None, "Telling the queue a worker is ready failed")

    def cancelTask(self, task):
        """Abandon a running task: its child is killed and replaced, and
        the other calls it had run on the new child."""
        for child in list(self.children):
            for call in child.pending.values():
                if call.task is task:
                    call.abandoned = True
                    child.abandoning = True
                    if child is self.child and not self._stopping:
                        self._replace()
                    child.kill()
                    return

    # --- Statistics --------------------------------------------------------

    def stats(self):
        """D→list of ``(mainSideSeconds, childSideSeconds)``, one per call
        (with ``callStats=True``; else an empty list)."""
        return defer.succeed(list(self.callTimes or ()))

    def memUsage(self):
        """The child's virtual memory size in kB, or None if it is not
        running."""
        if os.name != "posix":
            raise RuntimeError(
                "Memory usage checking only supported under POSIX")
        if not self.child.is_alive():
            return None
        try:
            with open("/proc/{}/status".format(self.child.pid)) as fh:
                for line in fh:
                    match = self.reVmSize.match(line)
                    if match:
                        return int(match.group(1))
        except OSError:
            return None
        return None

    # --- Ending ----------------------------------------------------------

    def stop(self):
        """Fires once every call handed to me has finished and my children
        have exited."""
        if self._dStopped is None:
            self._stopping = True
            self._dStopped = defer.Deferred()
            self._checkStopped()
        d = defer.Deferred()
        self._dStopped.addBoth(lambda result: d.callback(None) or result)
        return d

    def _checkStopped(self):
        """Once nothing is in flight, close the children's pipes; once
        they have exited, free the shared memory and fire."""
        if self._dStopped is None or self._inFlight():
            return
        for child in self.children:
            child.finish()
        if not self.children and not self._dStopped.called:
            self.arena.close()
            sweepOrphans()
            while self._readyWaiters:
                self._wake(*self._readyWaiters.popleft())
            self._dStopped.callback(None)

    def crash(self):
        """Kill my children now; return the unfinished tasks."""
        unfinished = self.tasks
        self._stopping = True
        if self._dStopped is None:
            self._dStopped = defer.Deferred()
        for child in list(self.children):
            for call in child.pending.values():
                call.abandoned = True
            self._callsInFlight -= len(child.pending)
            child.pending.clear()
            child.kill()
        self.arena.close()
        return unfinished


def _checkCount(name, value):
    """Raise unless ``value`` is a positive int."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(
            "{} must be a positive integer, not {!r}".format(name, value))


#: The ProcessQueues running now; the last to shut down frees what is left
#: of the SharedArrays.
_liveQueues = weakref.WeakSet()


class ProcessQueue(TaskQueue):
    """
    A TaskQueue with ``N`` ProcessWorkers attached: calls run in ``N``
    child processes (``ProcessQueue.cores()`` is a good N).

    Keywords: ``callStats`` (keep call times, see ``stats()``), and the
    ProcessWorker keywords ``pipelining``, ``shmThreshold``, ``maxTasks``,
    ``python``, ``env`` and ``iterationBatch``; the rest go to TaskQueue.
    """

    WORKER_KEYWORDS = (
        "pipelining", "shmThreshold", "maxTasks", "python", "env",
        "iterationBatch")

    @staticmethod
    def cores():
        """The number of CPU cores available."""
        return ProcessWorker.cores()

    def __init__(self, N, **kw):
        if not isinstance(N, int) or isinstance(N, bool) or N < 0:
            raise ValueError(
                "N must be a number of workers (int >= 0), not {!r}".format(N))
        callStats = kw.pop("callStats", False)
        options = {name: kw.pop(name) for name in self.WORKER_KEYWORDS
                   if name in kw}
        TaskQueue.__init__(self, **kw)
        _liveQueues.add(self)
        for _ in range(N):
            self.attachWorker(ProcessWorker(callStats=callStats, **options))

    def stats(self):
        """D→the ``(mainSide, childSide)`` call times of every worker."""
        dList = [w.stats() for w in self.th.roster("process")]
        return defer.gatherResults(dList).addCallback(
            lambda lists: [x for stats in lists for x in stats])

    def crashWorkers(self):
        """Detach and kill every worker at once; D→list of their lists of
        unfinished tasks."""
        dList = [self.detachWorker(worker, crash=True)
                 for worker in list(self.th.roster("process"))]
        return defer.gatherResults(dList)

    @defer.inlineCallbacks
    def shutdown(self):
        """Shut down as TaskQueue does; the last ProcessQueue to go also
        frees the SharedArrays still open."""
        yield TaskQueue.shutdown(self)
        _liveQueues.discard(self)
        if not _liveQueues:
            closeAllOwned()


class ProcessBase:
    """
    A base class for objects passed to process workers as arguments: each
    unpickled copy sees, through ``data`` and attribute access, state that
    lasts for the life of its process.
    """

    _pb_data = {}

    @property
    def pid(self):
        """The ID of the process I am in."""
        return os.getpid()

    @property
    def data(self):
        """A dict kept for this process."""
        return self._pb_data.setdefault(self.pid, {})

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self.data[name]
        except KeyError:
            raise AttributeError(name)
