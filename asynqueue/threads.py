"""
Threads for asynqueue: ``ThreadQueue``, ``ThreadWorker`` and the module's
``deferToThread`` run blocking calls in dedicated threads (``ThreadLooper``),
with deferred iteration fetched in those threads. ``Consumerator``,
``Filerator`` and ``OrderedItemProducer`` bridge Twisted producers and
consumers with blocking iterators running in other threads.
"""
import inspect
import queue
import threading
import weakref
from collections import deque
from functools import partial

from twisted.internet import defer, reactor
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.threads import deferToThreadPool
from twisted.python import threadpool
from twisted.python.failure import Failure
from twisted.python.threadable import isInIOThread
from zope.interface import implementer

from . import errors
from .base import TaskQueue
from .info import Info
from .interfaces import IWorker
from .iteration import Deferator, IterationProducer, Prefetcherator
from .util import CallRunner, DeferredLock, DeferredTracker, callAfterDeferred
from .workers import iterationResult, popWorkerOptions

__all__ = [
    "deferToThread", "ThreadQueue", "ThreadWorker", "ThreadLooper",
    "PoolUser", "IterationGetter", "Consumerator", "Filerator",
    "OrderedItemProducer",
]

#: The status text of a call handed to a looper thread that never got it.
LOST_CALL_TEXT = "Thread timed out waiting for this call!"

#: Tells a looper thread to end.
_STOP = object()

#: Loopers with a running thread, and buffered getters still iterating:
#: both are ended before Python joins threads at interpreter exit.
_liveLoopers = weakref.WeakSet()
_liveGetters = weakref.WeakSet()


# --- Small thread helpers ---------------------------------------------------

def _capture(f, *args):
    """Run ``f(*args)``: (True, result), or (False, Failure) if it raised."""
    try:
        return True, f(*args)
    except BaseException:
        return False, Failure()


def _settle(d, outcome):
    """Fire Deferred d with an outcome of ``_capture``."""
    succeeded, value = outcome
    if succeeded:
        d.callback(value)
    else:
        d.errback(value)


def _settled(outcome):
    """A Deferred already fired with an outcome of ``_capture``."""
    d = defer.Deferred()
    _settle(d, outcome)
    return d


def _removeTrigger(triggerID):
    """Remove a reactor system event trigger, if there is one."""
    if triggerID is not None:
        reactor.removeSystemEventTrigger(triggerID)


def _deferToOwnThread(f, name):
    """Run ``f()`` in a new thread that ends right after; D→its result."""
    d = defer.Deferred()

    def run():
        reactor.callFromThread(_settle, d, _capture(f))

    threading.Thread(target=run, name=name).start()
    return d


# --- deferToThread ----------------------------------------------------------

#: The looper of the module-level deferToThread, created on first use.
_DTL = [None]


def deferToThread(*fargs, **kw):
    """
    Run ``f(*args, **kw)`` in one dedicated thread shared by every caller of
    this function: D→its result, a ``ThreadError`` failure if it raised, a
    Deferator for an iterator (or D→the consumer once a ``consumer=``
    keyword's IConsumer has had every item). Calls run in order;
    ``doNext=True`` jumps ahead and ``raw=True`` returns iterators as they
    are.

    Called with no arguments, it stops that thread: D→None when it is gone.
    A later call starts a new one.
    """
    looper = _DTL[0]
    if not fargs:
        _DTL[0] = None
        return defer.succeed(None) if looper is None else looper.stop()
    if looper is None or not looper.dLock.running:
        looper = _DTL[0] = ThreadLooper()
    return looper.deferToThread(*fargs, **kw)


# --- ThreadQueue and ThreadWorker -------------------------------------------

class ThreadQueue(TaskQueue):
    """
    A TaskQueue with one ThreadWorker: queued calls run one at a time in a
    dedicated thread, so blocking code never blocks the reactor, and what one
    task touches is left alone until its callbacks have run.

    Keywords go to TaskQueue, except ``raw`` (default False), the worker's
    default for returning iterators as they are.
    """

    def __init__(self, **kw):
        raw = kw.pop("raw", False)
        TaskQueue.__init__(self, **kw)
        self.worker = ThreadWorker(raw=raw)
        self.d = self.attachWorker(self.worker)

    def deferToThread(self, f, *args, **kw):
        """Run the call in my worker's thread, skipping the queue (once the
        worker is attached); see ``ThreadLooper.deferToThread``."""
        return callAfterDeferred(
            self, "d", self.worker.t.deferToThread, f, *args, **kw)


@implementer(IWorker)
class ThreadWorker:
    """
    An IWorker that runs each task in its own dedicated thread (a
    ``ThreadLooper``), one at a time, doNext tasks first. Iterator results
    become Deferators whose items are fetched in that thread, or feed the
    task's consumer.
    """

    cQualified = ["thread", "local"]

    def __init__(self, series=[], raw=False):
        self.tasks = []
        self.iQualified = list(series)
        self.raw = raw
        self.t = ThreadLooper(raw)

    def setResignator(self, callableObject):
        self.t.dLock.addStopper(callableObject)

    def run(self, task):
        """Run ``task`` in my thread; fires (None) when it is done."""
        raw, consumer, vip = popWorkerOptions(task, self.raw)
        self.tasks.append(task)
        f, args, kw = task.callTuple
        d = self.t.call(f, *args, doNext=vip, raw=raw, **kw)
        return d.addCallback(self._done, task, consumer)

    def _done(self, statusResult, task, consumer):
        """Hand the outcome to the task, which cancels its timer."""
        if task in self.tasks:
            self.tasks.remove(task)
        status, result = statusResult
        if status == b'i' and consumer is not None:
            statusResult = iterationResult(result, consumer)
        task.callback(statusResult)

    def stop(self):
        """Fires once every task handed to me is done and my thread has
        ended; Deferators still iterating are stopped."""
        return self.t.stop()

    def crash(self):
        """Stop when the thread is free (it can't be killed) and return the
        unfinished tasks."""
        self.t.stop()
        return list(self.tasks)


# --- ThreadLooper -----------------------------------------------------------

class _LegacyEvent:
    """What ``ThreadLooper.event`` returns, for 0.9 code that stopped the
    looper's thread by hand."""

    def __init__(self, looper):
        self.looper = looper

    def set(self):
        if self.looper.callTuple is None:
            self.looper._inbox.put(_STOP)


class ThreadLooper:
    """
    Runs calls, in the order received (``doNext`` ones first), in one
    dedicated OS thread of its own; ``call`` gives D→``(status, result)``.

    An iterator result (unless raw) becomes a Deferator whose items, the
    first one included, are fetched in my thread; an empty one becomes
    ``[]``. ``stop()`` runs the calls already made, stops the Deferators
    still handed out (a fetch in flight is still delivered), and ends the
    thread without ever blocking the reactor. The thread is also ended
    before reactor shutdown and at interpreter exit.
    """

    #: Seconds the thread waits for a call before checking whether one that
    #: was handed to it got lost (it then fails with ``LOST_CALL_TEXT``).
    timeout = 60

    #: 0.9 code ended the thread with ``callTuple = None; event.set()``;
    #: that still works (see ``event``).
    callTuple = ()

    @property
    def event(self):
        """0.9's wake-up event: ``set()`` ends my thread if ``callTuple``
        was set to None, as 0.9's loop did."""
        return _LegacyEvent(self)

    def __init__(self, raw=False):
        self.runner = CallRunner(raw)
        self.dLock = DeferredLock()
        self.threadRunning = True
        self._inbox = queue.Queue()
        self._handOffLock = threading.Lock()
        self._outstanding = None
        self._ending = False
        self._deferators = weakref.WeakSet()
        self._dThreadEnded = defer.Deferred()
        self._triggerID = reactor.addSystemEventTrigger(
            "before", "shutdown", self._reactorShutdown)
        self.thread = threading.Thread(target=self.loop, name=repr(self))
        _liveLoopers.add(self)
        self.thread.start()

    # --- In my thread --------------------------------------------------

    def loop(self):
        """Run each job handed to me until told to stop (in my thread)."""
        while True:
            try:
                item = self._inbox.get(timeout=self.timeout)
            except queue.Empty:
                self._reportLostCall()
                continue
            if item is _STOP:
                break
            job, d = item
            with self._handOffLock:
                self._outstanding = None
            reactor.callFromThread(_settle, d, _capture(job))
        self.threadRunning = False
        reactor.callFromThread(self._threadEnded)

    def _reportLostCall(self):
        """Fail a job that was handed to me but never arrived."""
        with self._handOffLock:
            d = self._outstanding
            if d is None or not self._inbox.empty():
                return
            self._outstanding = None
        lost = Failure(errors.ThreadError(LOST_CALL_TEXT))
        reactor.callFromThread(_settle, d, (False, lost))

    def _callInThread(self, callTuple):
        """Run a call; for an iterator, also fetch its first item here, so
        that no ``next()`` ever runs in the reactor thread."""
        status, result = self.runner(callTuple)
        if status == b'i':
            if inspect.isgeneratorfunction(result):
                result = result()
            result = (result, _capture(next, result))
        return status, result

    # --- Handing jobs to my thread ---------------------------------------

    def _runLocked(self, job, vip=False):
        """D→what ``job()`` returns, run in my thread with my lock held."""
        d = self.dLock.acquire(vip)
        d.addCallback(lambda _: self._handOff(job))
        return d.addBoth(self._released)

    def _handOff(self, job):
        if self._ending:
            return defer.fail(errors.ThreadError(
                "{!r} has stopped and runs no more calls".format(self)))
        d = defer.Deferred()
        with self._handOffLock:
            self._outstanding = d
            self._inbox.put((job, d))
        return d

    def _released(self, result):
        self.dLock.release()
        return result

    # --- Calls -------------------------------------------------------------

    def call(self, f, *args, **kw):
        """
        Run ``f(*args, **kw)`` in my thread: D→``(status, result)`` with
        status ``b'r'``, ``b'e'`` (error text) or ``b'i'`` (a Deferator, or
        ``[]`` if the iterator is empty). ``doNext=True`` runs it before the
        calls waiting; ``raw`` overrides my default.
        """
        vip = kw.pop("doNext", False)
        callTuple = (f, args, kw)
        d = self._runLocked(partial(self._callInThread, callTuple), vip)
        d.addErrback(self._callFailed, callTuple)
        return d.addCallback(self._deferredIteration)

    @staticmethod
    def _callFailed(failure, callTuple):
        """The call never ran (``ThreadError``) or escaped the runner."""
        if failure.check(errors.ThreadError):
            return b'e', str(failure.value)
        f, args, kw = callTuple
        return b'e', Info().setCall(f, args, kw).aboutFailure(failure)

    def _deferredIteration(self, statusResult):
        """Make an iterator result a Deferator fetching in my thread."""
        status, result = statusResult
        if status != b'i':
            return statusResult
        iterator, firstOutcome = result
        representation = repr(iterator)
        prefetcher = Prefetcherator(representation)
        d = prefetcher.setup(_ThreadFetcher(self, iterator, firstOutcome))
        return d.addCallback(self._deferator, prefetcher, representation)

    def _deferator(self, notEmpty, prefetcher, representation):
        if not notEmpty:
            return b'i', []
        dr = Deferator(representation, prefetcher.getNext)
        self._deferators.add(dr)
        return b'i', dr

    def deferToThread(self, f, *args, **kw):
        """
        Twisted's deferToThread, done in my thread, queued and doNext-able:
        D→the result, or a ``ThreadError`` failure with the error text. An
        iterator gives a Deferator, or with a ``consumer`` keyword (an
        IConsumer) D→the consumer once every item was written to it.
        """
        consumer = kw.pop("consumer", None)
        return self.call(f, *args, **kw).addCallback(self._result, consumer)

    @staticmethod
    def _result(statusResult, consumer):
        status, result = statusResult
        if status == b'e':
            return Failure(errors.ThreadError(result))
        if status == b'i' and consumer is not None:
            return iterationResult(result, consumer)[1].run()
        return result

    def dr2ip(self, dr, consumer=None):
        """An IterationProducer for Deferator ``dr``; given a consumer,
        registered with it and run: D→the consumer when done."""
        producer = IterationProducer(dr)
        if consumer is None:
            return producer
        producer.registerConsumer(consumer)
        return producer.run()

    # --- Stopping ------------------------------------------------------------

    def stop(self):
        """
        D→None once the calls made before have run, the Deferators I handed
        out are stopped and my thread has ended. It never blocks the
        reactor: the thread reports its end itself.
        """
        if self.dLock.running:
            self._unwatchShutdown()
            self.dLock.addStopper(self._stopDeferators)
            self.dLock.addStopper(self._endThread)
        return self.dLock.stop()

    def _stopDeferators(self):
        for dr in list(self._deferators):
            dr.stop()

    def _endThread(self):
        self._endSoon()
        return self._dThreadEnded

    def _endSoon(self):
        """Have my thread end after the job it is running (any thread)."""
        self._ending = True
        self._inbox.put(_STOP)

    def _threadEnded(self):
        _liveLoopers.discard(self)
        if not self._dThreadEnded.called:
            self._dThreadEnded.callback(None)

    def _reactorShutdown(self):
        self._triggerID = None
        return self.stop()

    def _unwatchShutdown(self):
        triggerID, self._triggerID = self._triggerID, None
        _removeTrigger(triggerID)


class _ThreadFetcher:
    """
    The fetch callable of a Prefetcherator over an iterator living in a
    ThreadLooper's thread: each ``next()`` runs there (as doNext), the first
    one having run with the call itself.
    """

    def __init__(self, looper, iterator, firstOutcome):
        self.looper = looper
        self.iterator = iterator
        self.firstOutcome = firstOutcome

    def __call__(self):
        """D→the next item; fails with StopIteration at the end, also once
        the looper has stopped."""
        outcome, self.firstOutcome = self.firstOutcome, None
        if outcome is not None:
            return _settled(outcome)
        d = self.looper._runLocked(self.iterator.__next__, vip=True)
        return d.addErrback(_endedByLooper)


def _endedByLooper(failure):
    """A fetch the looper could not run ends the iteration quietly."""
    failure.trap(errors.ThreadError)
    return Failure(StopIteration())


# --- The thread pool --------------------------------------------------------

class PoolUser:
    """
    The base of objects that run blocking code in one Twisted ThreadPool
    shared by all of them (class-wide, as in 0.9): at least ``minThreads``,
    at most ``maxThreads`` threads, started on first use.

    The pool is stopped (after its work is done) by ``shutdown()``, before
    reactor shutdown (after ending the blocking iterations of Consumerators
    and Filerators) and at interpreter exit; a later use starts a new one.
    """

    minThreads = 2
    maxThreads = 10
    _pool = None
    _triggerID = None
    dtp = None

    @classmethod
    def setup(cls, maxThreads=None):
        """Create the pool if need be; with ``maxThreads``, resize it (for
        every user, present and future)."""
        if maxThreads:
            PoolUser.maxThreads = maxThreads
            if PoolUser._pool is not None:
                PoolUser._pool.adjustPoolsize(*PoolUser._poolSize())
        if PoolUser.dtp is None:
            PoolUser.dtp = DeferredTracker()
        if PoolUser._pool is None:
            PoolUser._pool = threadpool.ThreadPool(
                *PoolUser._poolSize(), name="AsynQueue.IterationGetter")
            PoolUser._triggerID = reactor.addSystemEventTrigger(
                "before", "shutdown", PoolUser._reactorShutdown)

    @staticmethod
    def _poolSize():
        return (min(PoolUser.minThreads, PoolUser.maxThreads),
                PoolUser.maxThreads)

    @classmethod
    def shutdown(cls):
        """D→None once the pool's work is done and its threads have ended
        (joined in a thread of their own, never in the reactor's)."""
        dtp = PoolUser.dtp
        d = defer.succeed(True) if dtp is None else dtp.deferToAll()
        return d.addCallback(lambda _: PoolUser._stopPool())

    @staticmethod
    def _stopPool():
        pool, PoolUser._pool = PoolUser._pool, None
        triggerID, PoolUser._triggerID = PoolUser._triggerID, None
        _removeTrigger(triggerID)
        if pool is not None and pool.started:
            return _deferToOwnThread(pool.stop, "AsynQueue pool stopper")

    @staticmethod
    def _reactorShutdown():
        PoolUser._triggerID = None
        for getter in list(_liveGetters):
            getter._abort()
        return PoolUser.shutdown()

    @staticmethod
    def _stopPoolAtExit():
        pool = PoolUser._pool
        if pool is not None and pool.started:
            pool.stop()

    @classmethod
    def deferToThreadInPool(cls, f, *args, **kw):
        """Run ``f(*args, **kw)`` in a pool thread: D→its result (an
        errback if it raised). ``shutdown`` waits for it."""
        pool = PoolUser._startedPool()
        return PoolUser.dtp.put(
            deferToThreadPool(reactor, pool, f, *args, **kw))

    @staticmethod
    def _startedPool():
        PoolUser.setup()
        if not PoolUser._pool.started:
            PoolUser._pool.start()
        return PoolUser._pool

    @property
    def pool(self):
        """The shared ThreadPool, started."""
        return self._startedPool()


# --- Iteration getters ------------------------------------------------------

class IterationGetter(PoolUser):
    """
    The base of objects that take data on one end and are a blocking
    iterator on the other (iterate them in a thread, never the reactor's).

    For 0.9 subclasses, ``start()`` runs the abstract ``loop()`` in a pool
    thread, with the handshake of ``cLock``, ``nLock`` and ``bLock``
    described there. Consumerator and Filerator need no thread of their own.
    """

    class IterationStopper:
        """Put after the last item: the blocking iterator stops there."""

    def __init__(self, maxThreads=None):
        self.setup(maxThreads)
        self.runState = "init"
        self.dList = []

    def start(self):
        """Set up the handshake locks and run ``loop`` in a pool thread."""
        self.runState = "started"
        self.cLock = threading.Semaphore(0)
        self.bLock = threading.Lock()
        self.bLock.acquire()
        self.nLock = threading.Lock()
        self.dList.append(self.deferToThreadInPool(self.loop))

    def loop(self):
        """
        Override to feed the blocking iterator, in a pool thread: (1)
        acquire ``cLock`` (a value is available) and take the value; (2)
        acquire ``nLock`` (the last one was read), store the value in
        ``bIterationValue`` and release ``bLock``; (3) end after passing an
        ``IterationStopper`` through.
        """
        raise NotImplementedError(
            "{} must override loop()".format(type(self).__name__))

    def deferUntilDone(self):
        """A DeferredList that fires when my iterations are done."""
        return defer.DeferredList(self.dList)

    def __iter__(self):
        return self

    def __next__(self):
        self.bLock.acquire()
        value = self.bIterationValue
        self.nLock.release()
        if isinstance(value, self.IterationStopper):
            raise StopIteration
        return value

    def next(self):
        """0.9's (Python 2) name for ``__next__``."""
        return self.__next__()


class _BufferedGetter(IterationGetter):
    """
    An IterationGetter whose blocking iterator reads a thread-safe buffer
    directly: no pool thread, no stall on items put before anyone iterates.

    ``runState`` is ``'running'`` while items are accepted, ``'stopping'``
    once the stopper is put (or iteration was ended early), ``'stopped'``
    once the iterator has reached the end.
    """

    def __init__(self, maxThreads=None):
        super().__init__(maxThreads)
        self._condition = threading.Condition()
        self._items = deque()
        self._aborted = False
        self._exhausted = False
        self._dDone = None

    def start(self):
        """Start (or restart) accepting items."""
        with self._condition:
            self._items.clear()
            self._aborted = self._exhausted = False
            self.runState = "running"
        self._dDone = defer.Deferred()
        self.dList.append(self._dDone)
        _liveGetters.add(self)

    def _put(self, item):
        """Queue item for the iterator (any thread); False if I no longer
        accept items."""
        with self._condition:
            if self.runState != "running":
                return False
            self._items.append(item)
            if isinstance(item, self.IterationStopper):
                self.runState = "stopping"
            self._condition.notify()
        return True

    def _putStopper(self):
        return self._put(self.IterationStopper())

    def __next__(self):
        """The next item, waiting for it (in a blocking thread)."""
        with self._condition:
            if self._exhausted:
                raise StopIteration
            item = self._waitForItem()
            ended = isinstance(item, self.IterationStopper)
            if ended:
                self._exhausted = True
                self.runState = "stopped"
        reactor.callFromThread(self._taken, item)
        if ended:
            raise StopIteration
        return item

    def _waitForItem(self):
        """Pop the next item, waiting for one (holding the condition); a
        stopper once iteration was ended and no item is left."""
        while not self._items:
            if self._aborted:
                return self.IterationStopper()
            if isInIOThread():
                raise RuntimeError(
                    "Iterating {!r} in the reactor thread would block it; "
                    "iterate it in a thread".format(self))
            self._condition.wait()
        return self._items.popleft()

    def _taken(self, item):
        """The iterator took ``item`` (in the reactor thread)."""
        if isinstance(item, self.IterationStopper):
            self._finish()

    def _finish(self):
        """The iteration is over: fire what waits for it."""
        _liveGetters.discard(self)
        if self._dDone is not None and not self._dDone.called:
            self._dDone.callback(None)

    def _wakeReaders(self):
        """End the iteration after the items already put (any thread)."""
        with self._condition:
            self._aborted = True
            if self.runState == "running":
                self.runState = "stopping"
            self._condition.notify_all()

    def _abort(self):
        """End the iteration now (in the reactor thread)."""
        self._wakeReaders()
        self._finish()

    def _whenDone(self):
        """D→None once my iteration is over."""
        if self._dDone is None:
            return defer.succeed(None)
        return defer.DeferredList([self._dDone]).addCallback(lambda _: None)


@implementer(IConsumer)
class Consumerator(_BufferedGetter):
    """
    An IConsumer for Twisted code and a blocking iterator for code running
    in a thread (a ThreadQueue task, say): what the producer writes comes
    out of the iterator in order, and the iterator stops once the producer
    unregisters. Use it from the reactor thread on the consumer side.

    A push producer (given to the constructor, or to ``registerProducer``)
    is paused while ``bufferSize`` written items wait for the iterator; a
    pull producer is asked for one item each time one is taken.
    """

    #: How many written items may wait before a push producer is paused.
    bufferSize = 1

    def __init__(self, producer=None, maxThreads=None):
        super().__init__(maxThreads)
        self.producer = None
        self.streaming = None
        self._writes = deque()
        self._producerPaused = False
        if producer is not None:
            self.registerProducer(producer, True)

    def registerProducer(self, producer, streaming):
        """IConsumer: RuntimeError if I already have a producer."""
        if self.producer is not None:
            raise RuntimeError(
                "{!r} already has producer {!r}; it must unregister "
                "first".format(self, self.producer))
        self.producer, self.streaming = producer, streaming
        self._producerPaused = False
        self.start()
        if not streaming:
            producer.resumeProducing()

    def unregisterProducer(self):
        """IConsumer: no more items. D→None once the iterator has reached
        the end."""
        if self.runState == "init":
            return defer.succeed(None)
        self._putStopper()
        return self._whenDone()

    def stop(self):
        """Stop my producer and end the iteration now: the iterator stops
        after the items already written (those still waiting are not
        waited for). D→None."""
        if self.producer is not None and self.runState == "running":
            self.producer.stopProducing()
        if self.runState != "init":
            self._abort()
        return defer.succeed(None)

    def write(self, data):
        """IConsumer: queue ``data`` for the iterator. D→None once it has
        been taken (at once if the iteration has ended)."""
        if self.runState == "init":
            self.start()
        if not self._put(data):
            return defer.succeed(None)
        d = defer.Deferred()
        self._writes.append(d)
        self._throttle()
        return d

    def _throttle(self):
        """Pause a push producer while too many items wait."""
        if (self.streaming and not self._producerPaused
                and len(self._writes) >= self.bufferSize):
            self._producerPaused = True
            self.producer.pauseProducing()

    def _taken(self, item):
        if self._writes:
            self._writes.popleft().callback(None)
        if isinstance(item, self.IterationStopper):
            self._finish()
        elif self.runState == "running":
            self._askForMore()

    def _askForMore(self):
        """An item was taken: resume a paused push producer once few
        enough wait, or ask a pull producer for the next one."""
        producer = self.producer
        if producer is None:
            return
        if not self.streaming:
            producer.resumeProducing()
        elif self._producerPaused and len(self._writes) < self.bufferSize:
            self._producerPaused = False
            producer.resumeProducing()

    def _finish(self):
        self.producer = None
        writes, self._writes = self._writes, deque()
        for d in writes:
            d.callback(None)
        super()._finish()


class Filerator(_BufferedGetter):
    """
    A file to write to (from any thread, the reactor's included) and a
    blocking iterator over what was written, in another thread. Writes are
    never lost, even those made before anyone iterates; ``close()`` ends
    the iteration after them, and writing after it raises ValueError.
    """

    def __init__(self, maxThreads=None):
        super().__init__(maxThreads)
        self.start()

    @property
    def closed(self):
        """True once I was closed (or ended)."""
        return self.runState != "running"

    def write(self, data):
        """Queue ``data`` for the iterator."""
        if not self._put(data):
            raise ValueError("I/O operation on closed {!r}".format(self))

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        """Nothing to do: what was written can be iterated at once."""

    def close(self):
        """End the iteration after what was written; closing twice is
        harmless."""
        self._putStopper()


# --- OrderedItemProducer ----------------------------------------------------

@implementer(IPushProducer)
class OrderedItemProducer(PoolUser):
    """
    Feeds a blocking function ``fb`` (running in a pool thread, see
    ``start``) with items that asynchronous calls (``produceItem``) make,
    in the order those calls were made, whatever order they finish in.

    I write to my Consumerator ``i`` one item at a time, waiting for each
    to be taken, and stop writing while paused (items that arrive meanwhile
    wait in ``itemBuffer``). An error of an item's call ends the iteration
    after the items asked for before it. Call ``stop()`` when done: D→what
    ``fb`` returned.
    """

    def __init__(self, maxThreads=None):
        self.setup(maxThreads)
        self.itemBuffer = {}
        self.k1, self.k2 = 0, 0
        self.dt = DeferredTracker()
        self.produce = True
        self.dFinished = None
        self._writing = False
        self._failure = None
        self._endAt = None
        self._stopCalled = False
        self.i = Consumerator(self)

    def start(self, fb, *args, **kw):
        """
        Run ``fb(self.i, *args, **kw)`` in a pool thread, ``i`` being the
        iterator of my items. D→None once it has started. When it returns,
        ``dFinished`` fires with ``(success, result)`` and production stops.
        """
        dStarted = defer.Deferred()
        call = partial(self._runBlocking, dStarted, fb, args, kw)
        self.dFinished = self.deferToThreadInPool(call).addBoth(
            self._finished)
        return dStarted

    def _runBlocking(self, dStarted, fb, args, kw):
        reactor.callFromThread(dStarted.callback, None)
        return fb(self.i, *args, **kw)

    def _finished(self, result):
        """fb returned (or raised): nothing more will be taken."""
        self.stopProducing()
        self.i._abort()
        return not isinstance(result, Failure), result

    def produceItem(self, fp, *args, **kw):
        """
        Make the next item with ``fp(*args, **kw)`` (it may return a
        Deferred): D→the item, once written to ``fb``'s iterator. Once
        production has stopped (or an item failed): D→None and fp is not
        called. If fp fails, the iteration ends after the items asked for
        before this one, and ``stop()`` fails with that error.
        """
        if self.produce is None or self._endAt is not None:
            return defer.succeed(None)
        k = self.k1
        self.k1 += 1
        dItem = self.dt.put(defer.Deferred())
        defer.maybeDeferred(fp, *args, **kw).addCallbacks(
            self._arrived, self._failed,
            callbackArgs=(k, dItem), errbackArgs=(k, dItem))
        return dItem

    def _arrived(self, item, k, dItem):
        if self.produce is None or (
                self._endAt is not None and k > self._endAt):
            dItem.callback(item)
            return
        self.itemBuffer[k] = (item, dItem)
        self._flush()

    def _failed(self, failure, k, dItem):
        dItem.callback(None)
        if self._endAt is None or k < self._endAt:
            self._failure, self._endAt = failure, k
        self._flush()

    def _flush(self):
        """Write the next item in order, if it has arrived and I may; end
        the iteration where an item failed."""
        if self._writing or self.produce is not True:
            return
        if self.k2 == self._endAt:
            self.i.stop()
            return
        if self.k2 not in self.itemBuffer:
            return
        item, dItem = self.itemBuffer.pop(self.k2)
        self.k2 += 1
        self._writing = True
        self.i.write(item).addCallback(self._written, item, dItem)

    def _written(self, _, item, dItem):
        self._writing = False
        dItem.callback(item)
        self._flush()

    @defer.inlineCallbacks
    def stop(self, failureObj=None):
        """
        End production once every item asked for was written: ``fb``'s
        iterator stops and D→what fb returned, or a failure (``failureObj``,
        an error of fp or of fb). Repeated calls: D→None.
        """
        if self._stopCalled:
            return None
        self._stopCalled = True
        if self.dFinished is None:
            self.stopProducing()   # Nothing would take my items
            self.i._abort()
        yield self.dt.deferToAll()
        result = None
        if self.dFinished is not None:
            yield self.i.stop()
            success, result = yield self.dFinished
        if failureObj is None:
            failureObj = self._failure
        return result if failureObj is None else failureObj

    def stopProducing(self):
        """Write nothing more; items waiting are dropped (their Deferreds
        fire with them)."""
        self.produce = None
        buffered, self.itemBuffer = self.itemBuffer, {}
        for k in sorted(buffered):
            item, dItem = buffered[k]
            dItem.callback(item)

    def pauseProducing(self):
        if self.produce is not None:
            self.produce = False

    def resumeProducing(self):
        if self.produce is not None:
            self.produce = True
            self._flush()


# --- Interpreter exit -------------------------------------------------------

def _atInterpreterExit():
    """Before Python joins non-daemon threads at exit: end the blocking
    iterations, the looper threads and the pool, so that none of our
    threads keeps the interpreter alive."""
    for getter in list(_liveGetters):
        getter._wakeReaders()
    for looper in list(_liveLoopers):
        looper._endSoon()
    PoolUser._stopPoolAtExit()


threading._register_atexit(_atInterpreterExit)
