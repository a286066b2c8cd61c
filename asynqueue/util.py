"""
Small Twisted tools the workers are built from: pickling helpers,
``callAfterDeferred``, ``killProcess``, ``ProcessProtocol``, the
``DeferredTracker`` and ``DeferredLock``, and the ``CallRunner``.

Nothing here polls: waits are fired by events (a tracked Deferred firing, a
lock release, a pidfd becoming readable), with timeouts on the reactor clock.
"""
import functools
import logging
import os
import pickle
import select
import signal
import time
from collections import deque
from contextlib import contextmanager

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IReactorFDSet, IReadDescriptor
from zope.interface import implementer

from .info import Info

__all__ = [
    "o2p", "p2o", "callAfterDeferred", "killProcess", "ProcessProtocol",
    "DeferredTracker", "DeferredLock", "CallRunner",
]

log = logging.getLogger("asynqueue")


def _reactor():
    """Return the global reactor, imported only when first needed so that
    importing asynqueue never installs one."""
    from twisted.internet import reactor
    return reactor


# --- Pickling ---------------------------------------------------------------

def o2p(obj):
    """Return the pickle of obj, or b"" for an empty list, tuple or dict."""
    if isinstance(obj, (list, tuple, dict)) and not obj:
        return b""
    return pickle.dumps(obj)


def p2o(pickledString, defaultObj=None):
    """Return the object pickled in pickledString, or defaultObj itself
    (not a copy) if the string is empty."""
    if not pickledString:
        return defaultObj
    return pickle.loads(pickledString)


# --- callAfterDeferred ------------------------------------------------------

def callAfterDeferred(namespace, dName, f, *args, **kw):
    """
    Do the call ``f(*args, **kw)`` once the Deferred that is attribute
    ``dName`` of ``namespace`` has fired, deleting that attribute first;
    at once if it is missing or None. Returns D→the call's result.

    The attribute's Deferred only signals readiness: its value is swallowed
    (it becomes None). A failure of it is passed on instead of calling f.
    """
    def call(_):
        delattr(namespace, dName)
        return defer.maybeDeferred(f, *args, **kw)

    d = getattr(namespace, dName, None)
    if d is None:
        return defer.maybeDeferred(f, *args, **kw)
    if d.called:
        return call(None)
    d2 = defer.Deferred().addCallback(call)
    d.chainDeferred(d2)
    return d2


# --- killProcess ------------------------------------------------------------

#: Seconds killProcess waits after SIGTERM before it sends SIGKILL.
TERM_GRACE_SECONDS = 5.0
#: Seconds between liveness checks, only where no pidfd can be watched.
FALLBACK_CHECK_SECONDS = 0.05
#: Whether to watch processes through pidfds (Linux 5.3+) when possible.
_usePidfd = hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")


def killProcess(pid):
    """
    Kill process pid (our child or not): SIGTERM, then SIGKILL if it is
    still alive after ``TERM_GRACE_SECONDS``. Returns D→True if it had to
    be killed, False if it was already dead.

    An exited child is reaped, unless it belongs to the reactor (started
    with ``spawnProcess``), which reaps its own. Raises ValueError for a pid
    that is not a positive int or is this process.
    """
    _checkPid(pid)
    try:
        watcher = _watcherFor(pid)
    except ProcessLookupError:
        return defer.succeed(False)
    if watcher.hasExited():
        watcher.close()
        _reap(pid)
        return defer.succeed(False)
    return _terminate(watcher)


def _checkPid(pid):
    """Refuse pids that would signal a process group or ourselves."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise ValueError(
            "killProcess needs the positive int pid of one process, "
            "not {!r}".format(pid))
    if pid == os.getpid():
        raise ValueError("killProcess refuses to kill the calling process")


def _watcherFor(pid):
    """Return a watcher of process pid; raise ProcessLookupError if there
    is no such process."""
    reactor = _reactor()
    if _usePidfd and IReactorFDSet.providedBy(reactor):
        try:
            return _PidfdWatcher(pid, reactor)
        except ProcessLookupError:
            raise
        except OSError:
            pass  # pidfds not supported by this kernel: fall back
    if not _processExists(pid):
        raise ProcessLookupError(pid)
    return _CheckingWatcher(pid, reactor)


@defer.inlineCallbacks
def _terminate(watcher):
    """Send SIGTERM, then SIGKILL if needed; D→True once it is gone."""
    try:
        watcher.sendSignal(signal.SIGTERM)
        exited = yield watcher.whenExited().addTimeout(
            TERM_GRACE_SECONDS, watcher.clock).addCallbacks(
                lambda _: True, _falseOnTimeout)
        if not exited:
            watcher.sendSignal(signal.SIGKILL)
            yield watcher.whenExited()
    finally:
        watcher.close()
    _reap(watcher.pid)
    return True


def _falseOnTimeout(failureObj):
    """Errback turning a Deferred timeout into False."""
    failureObj.trap(defer.TimeoutError)
    return False


def _reactorOwns(pid):
    """Return True if the reactor's process support will reap pid."""
    try:
        from twisted.internet.process import reapProcessHandlers
    except ImportError:
        return False
    return pid in reapProcessHandlers


def _reap(pid):
    """Reap pid if it is an exited child of ours that the reactor doesn't
    own, so that no zombie is left."""
    if _reactorOwns(pid):
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _processExists(pid):
    """Return True while pid has not exited (checking without pidfds)."""
    if not _reactorOwns(pid):
        try:
            reaped, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass  # Not our child: ask the kernel whether it is there
        else:
            return reaped == 0
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _ProcessWatcher:
    """
    Tells observers when one process exits; the base of the pidfd watcher
    and of the fallback that checks on a reactor timer.
    """

    def __init__(self, pid, reactor):
        self.pid = pid
        self.clock = reactor
        self._exited = False
        self._observers = []

    def whenExited(self):
        """Return D→None, fired once the process has exited."""
        if self._exited:
            return defer.succeed(None)
        d = defer.Deferred(canceller=self._observers.remove)
        self._observers.append(d)
        return d

    def _markExited(self):
        """Record the exit, stop watching and fire the observers."""
        self._exited = True
        self.close()
        observers, self._observers = self._observers, []
        for d in observers:
            d.callback(None)

    def hasExited(self):
        """Return True if the process has exited."""
        raise NotImplementedError

    def sendSignal(self, signalNumber):
        """Send the signal, unless the process is already gone."""
        try:
            self._sendSignal(signalNumber)
        except ProcessLookupError:
            pass

    def _sendSignal(self, signalNumber):
        raise NotImplementedError

    def close(self):
        """Stop watching and release what the watch holds."""
        raise NotImplementedError


@implementer(IReadDescriptor)
class _PidfdWatcher(_ProcessWatcher):
    """
    Watches a process through its pidfd, which the reactor reports readable
    when the process exits (Linux 5.3+). Signals go through the pidfd too,
    so they can never hit another process that reused the pid.
    """

    def __init__(self, pid, reactor):
        super().__init__(pid, reactor)
        self._fd = os.pidfd_open(pid)
        reactor.addReader(self)

    def fileno(self):
        return self._fd

    def logPrefix(self):
        return "pidfd-{:d}".format(self.pid)

    def doRead(self):
        self._markExited()

    def connectionLost(self, reason):
        """The reactor dropped us (at shutdown): stop watching, and fail
        anyone still waiting."""
        self.close()
        observers, self._observers = self._observers, []
        for d in observers:
            d.errback(reason)

    def hasExited(self):
        if not self._exited and self._fd >= 0:
            poller = select.poll()
            poller.register(self._fd, select.POLLIN)
            self._exited = bool(poller.poll(0))
        return self._exited

    def _sendSignal(self, signalNumber):
        signal.pidfd_send_signal(self._fd, signalNumber)

    def close(self):
        if self._fd >= 0:
            self.clock.removeReader(self)
            os.close(self._fd)
            self._fd = -1


class _CheckingWatcher(_ProcessWatcher):
    """
    The fallback where no pidfd can be watched: checks on the process every
    ``FALLBACK_CHECK_SECONDS`` on a reactor timer. A non-child zombie counts
    as alive until its parent reaps it.
    """

    def __init__(self, pid, reactor):
        super().__init__(pid, reactor)
        self._scheduleCheck()

    def _scheduleCheck(self):
        self._call = self.clock.callLater(FALLBACK_CHECK_SECONDS, self._check)

    def _check(self):
        self._call = None
        if self.hasExited():
            self._markExited()
        else:
            self._scheduleCheck()

    def hasExited(self):
        if not self._exited:
            self._exited = not _processExists(self.pid)
        return self._exited

    def _sendSignal(self, signalNumber):
        os.kill(self.pid, signalNumber)

    def close(self):
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


# --- ProcessProtocol --------------------------------------------------------

class ProcessProtocol(protocol.ProcessProtocol):
    """
    A simple protocol for ``reactor.spawnProcess``.

    ``d`` fires with the first non-empty stripped chunk (bytes) the process
    writes to stdout; stderr chunks are printed as ``"\\nERROR: <data>"``.
    The stopper, if given, is called once with the pid when the first pipe
    closes or the process exits or ends. ``pid`` comes from the transport.
    """

    def __init__(self, stopper=None):
        self.stopper = stopper
        self.d = defer.Deferred()
        self.pid = None
        self._stopperCalled = False

    def makeConnection(self, transport):
        self.pid = transport.pid
        super().makeConnection(transport)

    def childDataReceived(self, childFD, data):
        data = data.strip()
        if childFD == 1 and data and not self.d.called:
            self.d.callback(data)
        elif childFD == 2:
            print("\nERROR: {}".format(data.decode(errors="replace")))

    def childConnectionLost(self, childFD):
        self._callStopper()

    def processExited(self, reason):
        self._callStopper()

    def processEnded(self, reason):
        self._callStopper()

    def _callStopper(self):
        """Call the stopper with my pid, the first time only."""
        if self.stopper is None or self._stopperCalled:
            return
        self._stopperCalled = True
        self.stopper(self.pid)


# --- DeferredTracker --------------------------------------------------------

class DeferredTracker:
    """
    Tracks Deferreds without getting in their callback chains, and gives
    Deferreds that fire when all, any or enough of them have fired.

    The waits are event-driven: each waiter fires as the count changes, and
    a timeout is a reactor timer that is cancelled when the wait ends.
    ``interval`` and ``backoff`` are accepted for compatibility with 0.9
    (where waits polled) and ignored. Set ``clock`` to an IReactorTime
    (for example ``twisted.internet.task.Clock``) to time out on it
    instead of the reactor.
    """

    def __init__(self, interval=None, backoff=None):
        self.dCount = 0
        self.interval = interval
        self.backoff = backoff
        self.clock = None
        self._waiters = {}

    def addWait(self):
        """Add a wait condition; call ``removeWait`` once for each."""
        if self.dCount is not None:
            self.dCount += 1

    def removeWait(self):
        """Remove a wait condition added by ``addWait``."""
        if self.dCount:
            self.dCount -= 1
            self._wake()

    def quitWaiting(self):
        """Stop waiting, for good: every waiter fires True now, and every
        later one at once."""
        self.dCount = None
        self._wake()

    def put(self, d):
        """Track Deferred d (its result passes through untouched) and
        return it."""
        self.addWait()
        d.addBoth(self._removeWaitPassing)
        return d

    def _removeWaitPassing(self, result):
        self.removeWait()
        return result

    def notWaiting(self):
        """Return True if no tracked Deferred is pending."""
        return not self.dCount

    def deferToAll(self, timeout=None):
        """Return D→True once every tracked Deferred has fired (or
        ``quitWaiting``), False if ``timeout`` seconds pass first."""
        return self._deferUntil(self.notWaiting, timeout)

    def deferToAny(self, timeout=None):
        """
        Return D→True once any tracked Deferred pending now has fired (or
        ``quitWaiting``), False on timeout; True at once if none is
        pending. The pending count is frozen now, so each Deferred put
        while waiting needs one more to fire.
        """
        if not self.dCount:
            return defer.succeed(True)
        frozenCount = self.dCount
        return self._deferUntil(
            lambda: self.dCount is None or self.dCount < frozenCount, timeout)

    def deferUntilFewer(self, N, timeout=None):
        """Return D→True once fewer than N tracked Deferreds are pending
        (or ``quitWaiting``), False on timeout."""
        return self._deferUntil(
            lambda: self.dCount is None or self.dCount < N, timeout)

    def _deferUntil(self, condition, timeout):
        """Return D→True when condition() holds, checked now and on each
        count change; D→False after timeout seconds (None: no limit)."""
        if condition():
            return defer.succeed(True)
        d = defer.Deferred(canceller=self._forgetWaiter)
        self._waiters[d] = condition
        if timeout is None:
            return d
        clock = self.clock or _reactor()
        return d.addTimeout(timeout, clock).addErrback(_falseOnTimeout)

    def _forgetWaiter(self, d):
        self._waiters.pop(d, None)

    def _wake(self):
        """Fire each waiter whose condition now holds."""
        for d, condition in list(self._waiters.items()):
            if d in self._waiters and condition():
                del self._waiters[d]
                d.callback(True)


# --- DeferredLock -----------------------------------------------------------

class DeferredLock(defer.DeferredLock):
    """
    A ``defer.DeferredLock`` with VIP acquires and a ``stop`` that runs
    shutdown callables while holding the lock.

    After ``stop`` has finished, ``acquire`` returns an already-fired
    Deferred (no exclusion) and ``release`` does nothing, as in 0.9.
    ``allowZombies`` is accepted for compatibility and ignored.
    """

    def __init__(self, allowZombies=False):
        super().__init__()
        self.N_vips = 0
        self.stoppers = []
        self.running = True
        self._stopped = False
        self._afterStop = []
        self._stopNotices = []

    def acquire(self, vip=False):
        """
        Return D→self once the lock is mine. A ``vip`` waiter goes ahead of
        the normal waiters, behind earlier VIP ones. Once ``stop`` has been
        called, new acquires fire when it has finished.
        """
        if self._stopped:
            return defer.succeed(self)
        if not self.running:
            return self._waitIn(self._afterStop)
        if self.locked and vip:
            return self._waitAsVip()
        return super().acquire()

    def _waitIn(self, waiters):
        """Return a new Deferred, listed in waiters until it fires or is
        cancelled."""
        d = defer.Deferred(canceller=waiters.remove)
        waiters.append(d)
        return d

    def _waitAsVip(self):
        """Queue a VIP waiter behind the earlier VIP waiters."""
        d = defer.Deferred(canceller=self._cancelAcquire)
        d.addBoth(self._vipServed)
        self.waiting.insert(self.N_vips, d)
        self.N_vips += 1
        return d

    def _vipServed(self, result):
        self.N_vips -= 1
        return result

    def acquireAndRelease(self, vip=False):
        """Return D→None once the lock has been acquired and released."""
        return self.acquire(vip).addCallback(lambda lock: lock.release())

    def release(self):
        """Release the lock; does nothing once stopped."""
        if not self._stopped:
            super().release()

    @contextmanager
    def context(self, vip=False):
        """
        A context manager yielding the acquire Deferred, for the caller to
        wait on, then releasing the lock on exit, whatever happens. Inside
        an inlineCallbacks function::

            with lock.context() as d:
                yield d
                ...  # holding the lock
        """
        held = []
        d = self.acquire(vip).addCallback(_noteHeld, held)
        try:
            yield d
        finally:
            if held:
                self.release()
            elif not d.called:
                d.addCallback(lambda _: self.release())

    def addStopper(self, f, *args, **kw):
        """Add a call for ``stop`` to make; it may return a Deferred.
        Stoppers run, each awaited, in the order added."""
        self.stoppers.append([f, args, kw])

    def stop(self):
        """
        Return D→None once the lock has been acquired after all earlier
        waiters, the stoppers have run and the lock is stopped.

        The holder's ``release`` still works while the stop waits. A stopper
        that fails is logged; the others still run. Stoppers must not wait
        to acquire this lock. Calling stop again is safe.
        """
        if self._stopped:
            return defer.succeed(None)
        notice = self._waitIn(self._stopNotices)
        if self.running:
            self.running = False
            super().acquire().addCallback(self._runStoppers)
        return notice

    @defer.inlineCallbacks
    def _runStoppers(self, _):
        while self.stoppers:
            f, args, kw = self.stoppers.pop(0)
            try:
                yield defer.maybeDeferred(f, *args, **kw)
            except Exception:
                log.exception("Lock stopper %r failed", f)
        self._finishStop()

    def _finishStop(self):
        """Become a lock that no longer excludes, and fire everyone who
        waited for the stop."""
        self._stopped = True
        self.locked = False
        _fireAll(self._afterStop, self)
        _fireAll(self._stopNotices, None)


def _fireAll(waiters, result):
    """Empty the list of Deferreds, firing each with result."""
    pending = list(waiters)
    del waiters[:]
    for d in pending:
        d.callback(result)


def _noteHeld(lock, held):
    """Callback noting that the lock was acquired."""
    held.append(True)
    return lock


# --- CallRunner -------------------------------------------------------------

class CallRunner:
    """
    Runs ``(f, args, kw)`` calls for workers, returning a status tuple:
    ``(b'e', text)`` if the call raised, ``(b'i', iterator)`` for an
    iterator result unless raw, else ``(b'r', value)``.

    ``raw`` is the default for the per-call ``raw`` keyword (which f never
    sees): return iterators as they are. With ``callStats``, ``callTimes``
    holds the duration of each successful call, the last ``maxCallTimes``
    (100,000) only. With a ``reactor`` (raw only), calls made from another
    thread run in the reactor thread, waiting for Deferred results.
    """

    #: How many call durations ``callTimes`` keeps.
    maxCallTimes = 100000

    def __init__(self, raw=False, callStats=False, reactor=None):
        if reactor is not None and not raw:
            raise ValueError(
                "CallRunner runs calls in a reactor only in raw mode; "
                "pass raw=True with reactor")
        self.raw = raw
        self.info = Info()
        self.callStats = callStats
        if callStats:
            self.callTimes = deque(maxlen=self.maxCallTimes)
        self.reactor = reactor

    def __call__(self, callTuple):
        """Run the call in callTuple and return its status tuple."""
        f, args, kw = callTuple
        raw = None
        if "raw" in kw:
            kw = dict(kw)
            raw = kw.pop("raw")
        if raw is None:
            raw = self.raw
        try:
            result = self._timed(f, args, kw)
        except Exception:
            return b"e", self.info.setCall(f, args, kw).aboutException()
        if not raw and _isIterator(result):
            return b"i", result
        return b"r", result

    def _timed(self, f, args, kw):
        """Run the call, noting its duration if keeping stats."""
        if not self.callStats:
            return self._run(f, args, kw)
        startTime = time.perf_counter()
        result = self._run(f, args, kw)
        self.callTimes.append(time.perf_counter() - startTime)
        return result

    def _run(self, f, args, kw):
        """Run the call here, or in the reactor thread in reactor mode."""
        if self.reactor is None:
            return f(*args, **kw)
        from twisted.internet.threads import blockingCallFromThread
        from twisted.python.threadable import isInIOThread
        if isInIOThread():
            raise RuntimeError(
                "A CallRunner with a reactor must be called from a thread "
                "other than the reactor's, or it would deadlock")
        return blockingCallFromThread(self.reactor, f, *args, **kw)


def _isIterator(obj):
    """Return True if obj is an iterator by the rules of
    ``asynqueue.iteration.isIterator``."""
    return _iterationCheck()(obj)


@functools.lru_cache(maxsize=None)
def _iterationCheck():
    """Return ``iteration.isIterator``, imported on first use (iteration
    must never import util, so util imports it; lazily, to keep importing
    util cheap)."""
    from .iteration import isIterator
    return isIterator


# --- For testing ------------------------------------------------------------

def testFunction(x):
    """For testing only: return 2*x."""
    return 2 * x


class TestStuff:
    """For testing only: methods for the test suites to call."""

    @staticmethod
    def divide(x, y):
        return x / y

    def add(self, x, y):
        return x + y

    def accumulate(self, y):
        if not hasattr(self, "x"):
            self.x = 0
        self.x += y
        return self.x

    def setStuff(self, N1, N2):
        """Set ``stuff`` to N2 copies of a string of N1 'x's."""
        self.stuff = ["x" * N1] * N2
        return self

    def stufferator(self):
        for chunk in self.stuff:
            yield chunk

    def blockingTask(self, x, delay):
        """Sleep for delay seconds (in a thread!), then return 2*x."""
        time.sleep(delay)
        return 2 * x
