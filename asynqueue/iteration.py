"""
Deferred iteration: walk, one Deferred per item, over an iterator whose items
arrive asynchronously (from a thread, a child process or a server), and stream
those items into Twisted consumers.

It also keeps 0.9's public ``Delay``, a utility that waits on the reactor for
a time or polls with backoff until a condition holds; the library's own
machinery never polls.
"""
import inspect
import logging
from collections import deque
from operator import itemgetter

from twisted.internet import defer
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from .errors import ImplementationError, NotReadyError

__all__ = [
    "deferToDelay", "isIterator", "Delay", "Deferator", "Prefetcherator",
    "ListConsumer", "IterationProducer", "iteratorToProducer",
]

_log = logging.getLogger(__name__)


def _reactor():
    """The global reactor, imported on first use so that importing asynqueue
    never installs one."""
    from twisted.internet import reactor
    return reactor


def _notifier(d):
    """A new Deferred that fires with the result of ``d`` and leaves ``d``'s
    own result as it was."""
    observer = defer.Deferred()

    def relay(result):
        observer.callback(result)
        return result

    d.addBoth(relay)
    return observer


def _isAwaitable(result):
    """Whether ``result`` is a Deferred or a coroutine, which
    ``maybeDeferred`` waits for."""
    return isinstance(result, defer.Deferred) or inspect.iscoroutine(result)


def _checkConsumer(consumer):
    """Raise ImplementationError unless ``consumer`` provides IConsumer."""
    if not IConsumer.providedBy(consumer):
        raise ImplementationError(
            "{!r} does not provide twisted.internet.interfaces.IConsumer; "
            "declare it with @implementer(IConsumer)".format(consumer))


def deferToDelay(delay):
    """D→None after ``delay`` seconds; nothing is left on the reactor once it
    has fired."""
    return Delay(delay)()


def isIterator(x):
    """True if ``x`` is an iterator (or a generator function); see
    Deferator.isIterator."""
    return Deferator.isIterator(x)


class Delay:
    """
    Waits on the reactor: ``delay()`` for a time, ``untilEvent(checker)``
    polling with backoff until ``checker()`` is true.

    While it has delays pending, a Delay holds a reactor "before shutdown"
    trigger that fires them all; it removes the trigger as soon as none is
    pending, so an idle Delay leaves nothing registered.
    """

    _interval = 0.001
    _backoff = 1.10
    timeout = None

    def __init__(self, interval=None, backoff=None, timeout=None):
        self.interval = self._interval if interval is None else interval
        self.backoff = self._backoff if backoff is None else backoff
        if not 1.0 <= self.backoff <= 1.3:
            raise ValueError(
                "Delay backoff must be between 1.0 and 1.3, not {!r}".format(
                    self.backoff))
        if timeout:
            self.timeout = timeout
        self.pendingCalls = {}
        self.triggerID = None
        self.isShutdown = False

    def __call__(self, delay=None):
        """D→None after ``delay`` seconds (None: my interval; 0: the next
        reactor turn), at once after shutdown. Cancelling it cancels the
        underlying DelayedCall."""
        if self.isShutdown:
            return defer.succeed(None)
        d = defer.Deferred(self._cancel)
        call = _reactor().callLater(
            self.interval if delay is None else delay, d.callback, None)
        self.pendingCalls[call] = d
        d.addBoth(self._forget, call)
        self._watchShutdown()
        return d

    def shutdown(self):
        """Fire every pending delay now; later delays fire at once."""
        self.isShutdown = True
        self._unwatchShutdown()
        for call, d in list(self.pendingCalls.items()):
            if call.active():
                call.cancel()
                d.callback(None)

    def untilEvent(self, eventChecker, *args, **kw):
        """
        D→True once ``eventChecker(*args, **kw)`` returns something true,
        False once ``timeout`` seconds have passed without that, or None if I
        am shut down while waiting.

        It checks now, on the next reactor turn, and then after waits that
        start at ``interval`` and grow by ``backoff`` each time.
        """
        if not callable(eventChecker):
            raise TypeError(
                "untilEvent needs a callable event checker, not {!r}".format(
                    eventChecker))
        return self._poll(eventChecker, args, kw)

    @defer.inlineCallbacks
    def _poll(self, eventChecker, args, kw):
        if self.isShutdown or eventChecker(*args, **kw):
            return True
        yield self(0)
        interval, started = self.interval, _reactor().seconds()
        while True:
            if self.isShutdown:
                return None
            if eventChecker(*args, **kw):
                return True
            if self.timeout and _reactor().seconds() - started > self.timeout:
                return False
            yield self(interval)
            interval *= self.backoff

    def _cancel(self, d):
        for call, pending in list(self.pendingCalls.items()):
            if pending is d and call.active():
                call.cancel()

    def _forget(self, result, call):
        del self.pendingCalls[call]
        if not self.pendingCalls:
            self._unwatchShutdown()
        return result

    def _watchShutdown(self):
        if self.triggerID is None:
            self.triggerID = _reactor().addSystemEventTrigger(
                "before", "shutdown", self._reactorShutdown)

    def _unwatchShutdown(self):
        triggerID, self.triggerID = self.triggerID, None
        if triggerID is not None:
            _reactor().removeSystemEventTrigger(triggerID)

    def _reactorShutdown(self):
        # The reactor is running this trigger and drops it by itself.
        self.triggerID = None
        self.shutdown()


class Deferator:
    """
    An iterator of Deferreds, each firing with the next item of an iterator
    or fetcher that delivers its items asynchronously.

    Wait for each Deferred before asking for the next (``NotReadyError``
    otherwise), and call ``stop()`` (also available as the ``.stop`` of each
    Deferred) before leaving a loop early. ``d`` fires True when the
    iteration ran to its end and False when it was stopped or failed;
    unknown attributes are looked up on ``d``. Given no fetcher (extra
    arguments), no Prefetcherator and no iterator, it is empty.

    The fetcher returns D→(value, isValid, moreLeft). Invalid items are never
    handed out as values: one with ``moreLeft`` true is skipped (the same
    Deferred waits for the next valid item); one with ``moreLeft`` false
    ends the iteration, so the Deferred of that last step fires with None
    (as in 0.9). A failed fetch ends the iteration and that step's Deferred
    fails with it.
    """

    builtIns = (
        str, list, tuple, bytearray, memoryview, dict, set, frozenset)

    @classmethod
    def isIterator(cls, obj):
        """True for generators, generator functions and objects with callable
        ``__iter__`` and ``__next__``; False for Deferreds and built-in
        containers (so ``range`` and ``bytes`` are False, ``map`` is True)."""
        if isinstance(obj, defer.Deferred) or isinstance(obj, cls.builtIns):
            return False
        if inspect.isgenerator(obj) or inspect.isgeneratorfunction(obj):
            return True
        return (callable(getattr(obj, "__iter__", None))
                and callable(getattr(obj, "__next__", None)))

    def __init__(self, objOrRep, *args, **kw):
        self.d = defer.Deferred()
        self.callTuple = (None, (), {})
        self.moreLeft = True
        self.dIterate = None
        if isinstance(objOrRep, str):
            self.representation = objOrRep.strip("<>")
        else:
            self.representation = repr(objOrRep)
        if args:
            self.callTuple = (args[0], args[1:], kw)
        elif isinstance(objOrRep, Prefetcherator):
            self.callTuple = (objOrRep.getNext, (), {})
        elif self.isIterator(objOrRep):
            self._prefetch(objOrRep)
        else:
            self.representation = repr([])
            self._finish(True)
        self._nextReady = getattr(
            getattr(self.callTuple[0], "__self__", None), "nextReady", None)

    def __repr__(self):
        return "<Deferator wrapping of\n  <{}>,\nat 0x{:012x}>".format(
            self.representation, id(self))

    def __getattr__(self, name):
        if name == "d":
            raise AttributeError(name)
        return getattr(self.d, name)

    def __iter__(self):
        return self

    def __next__(self):
        """D→the next item, with a ``.stop`` attribute; StopIteration (and
        ``d`` fired True) when there are no more."""
        ready = self._readyItem()
        if ready is not None:
            return ready
        return self._nextItem().addCallback(itemgetter(0))

    def _readyItem(self):
        """
        A fired Deferred of the next item if the fetcher has it at hand,
        else None: items of a batch fetched from a worker then cost one
        Deferred each instead of a chain.
        """
        step = self._stepAtHand()
        if step is None:
            return None
        d = self.dIterate = defer.succeed(step[0])
        d.stop = self.stop
        return d

    def _stepAtHand(self):
        """``(value, True)`` of the next item if the fetcher has it at hand
        (its object's ``nextReady()`` gives ``(value, isValid, moreLeft)``
        without waiting, or None), else None; no Deferred at all."""
        nextReady = self._nextReady
        if nextReady is None or not self.moreLeft or (
                self.dIterate is not None and not self.dIterate.called):
            return None
        step = nextReady()
        if step is None or not step[1]:
            return None
        self.moreLeft = bool(step[2]) and not self.d.called
        return step[0], True

    def stop(self):
        """End the iteration early: ``d`` fires False (unless it has already
        fired) and no more items are fetched."""
        self._finish(False)

    def _nextItem(self):
        """D→(value, isValid) of the next step, under the rules of
        ``__next__``."""
        if not self.moreLeft:
            self._finish(True)
            raise StopIteration
        if self.dIterate is not None and not self.dIterate.called:
            raise NotReadyError(
                "Wait for the Deferred of the previous item of {!r} to fire "
                "before asking for the next one".format(self))
        self.dIterate = defer.Deferred()
        self.dIterate.stop = self.stop
        self._fetchValid().chainDeferred(self.dIterate)
        return self.dIterate

    def _fetchValid(self):
        f, args, kw = self.callTuple
        d = defer.maybeDeferred(f, *args, **kw)
        return d.addCallback(self._gotFetch).addErrback(self._fetchFailed)

    def _gotFetch(self, result):
        value, isValid, moreLeft = result
        self.moreLeft = bool(moreLeft) and not self.d.called
        if isValid:
            return value, True
        if self.moreLeft:
            return self._fetchValid()
        return None, False

    def _fetchFailed(self, failure):
        self.stop()
        return failure

    def _prefetch(self, iterator):
        prefetcher = Prefetcherator()
        self.callTuple = (prefetcher.getNext, (), {})
        prefetcher.setup(iterator).addCallback(self._prefetched)

    def _prefetched(self, notEmpty):
        if not notEmpty and self.dIterate is None:
            self._finish(True)

    def _finish(self, completed):
        self.moreLeft = False
        if not self.d.called:
            self.d.callback(completed)


class BatchFetcher:
    """
    A Deferator's fetcher for an iterator held elsewhere whose items come
    in batches: ``getNext`` hands out the items of the last batch and
    asks for the next one, with ``fetchBatch()`` (D→``(items,
    moreLeft)``; subclasses say how), only when they have run out.
    ``nextReady`` gives the Deferator items at hand without a Deferred.
    """

    def __init__(self):
        self.items = deque()
        self.more = True

    def fetchBatch(self):
        raise NotImplementedError("BatchFetcher subclasses fetch batches")

    def storeBatch(self, batch):
        """Keep a batch's items; ``ended()`` is called after the last."""
        items, more = batch
        self.items.extend(items)
        if not more:
            self.ended()

    def ended(self):
        """The iterator has no more batches."""
        self.more = False

    def nextReady(self):
        """``(value, True, moreLeft)`` of an item already fetched, or
        None (the Deferator's shortcut past ``getNext``)."""
        if self.items:
            value = self.items.popleft()
            return value, True, bool(self.items) or self.more
        return None

    def getNext(self):
        """D→(value, isValid, moreLeft), as a Deferator's fetcher."""
        if self.items:
            return defer.succeed(self.nextReady())
        if not self.more:
            return defer.succeed((None, False, False))
        d = self.fetchBatch().addCallback(self.storeBatch)
        return d.addCallback(lambda _: self.getNext())


class Prefetcherator:
    """
    Fetches the items of an iterator or fetch callable one ahead, so that
    ``getNext`` can say with each item whether another one follows.

    Each fetch runs wherever the fetch callable runs: pass a callable that
    returns a Deferred (for example one that runs ``next`` in a thread) to
    keep the iterator off the reactor thread. Fetches are made one at a
    time, in order, even when ``getNext`` is called again before the last
    call's Deferred fired.
    """

    __slots__ = ("ID", "nextCallTuple", "lastFetch", "_dNext")

    def __init__(self, ID=None):
        self.ID = ID

    def isBusy(self):
        """True while there is something being iterated over."""
        return hasattr(self, "nextCallTuple")

    def setup(self, *args, **kw):
        """
        Start iterating over ``args[0]``: an iterator, a generator function
        (called with the other arguments), or a callable fetching one item
        per call ``args[0](*args[1:], **kw)``, StopIteration marking the end.

        D→True if the first item was fetched, False if it was empty, if I am
        busy or if the arguments are unusable.
        """
        if self.isBusy() or not args:
            return defer.succeed(False)
        callTuple = self._callTuple(args, kw)
        if callTuple is None:
            return defer.succeed(False)
        self.nextCallTuple = callTuple
        self._dNext = defer.Deferred()
        return self._tryNext().addCallback(self._storeFirst, self._dNext)

    def getNext(self):
        """D→(value, isValid, moreLeft) for the next item; (None, False,
        False) once the iteration has ended. Values that are None are valid;
        any exception from the fetch, StopIteration included, ends it."""
        if not self.isBusy():
            return defer.succeed((None, False, False))
        dItem, self._dNext = self._dNext, defer.Deferred()
        return dItem.addCallback(self._handOut, self._dNext)

    @staticmethod
    def _callTuple(args, kw):
        source = args[0]
        if inspect.isgeneratorfunction(source):
            source = source(*args[1:], **kw)
        if Deferator.isIterator(source):
            return (source.__next__, (), {})
        if callable(source):
            return (source, args[1:], kw)
        return None

    def _storeFirst(self, first, dFirst):
        self.lastFetch = first
        dFirst.callback(first)
        return first[1]

    def _tryNext(self):
        """D→(value, True) for the next fetch, (None, False) at the end."""
        f, args, kw = self.nextCallTuple
        return defer.maybeDeferred(f, *args, **kw).addCallbacks(
            self._fetched, self._ended)

    @staticmethod
    def _fetched(value):
        return value, True

    def _ended(self, failure):
        del self.nextCallTuple
        if not failure.check(StopIteration):
            _log.warning(
                "Iteration %r ended by an error in its fetch: %s",
                self.ID, failure.getTraceback())
        return None, False

    def _handOut(self, item, dFollowing):
        value, isValid = item
        if not isValid:
            dFollowing.callback(item)
            return None, False, False
        return self._tryNext().addCallback(self._relay, value, dFollowing)

    def _relay(self, following, value, dFollowing):
        self.lastFetch = following
        dFollowing.callback(following)
        return value, True, following[1]


@implementer(IConsumer)
class ListConsumer:
    """
    A consumer for a push producer that collects what is written to it,
    each item passed through ``processItem`` (override it; it may return a
    Deferred). Keyword arguments become attributes.

    The producer is paused while each item is processed. Calling the
    consumer gives D→the processed items in write order, once the producer
    has unregistered and all processing is done; it fails with the first
    error of ``processItem``, if any.
    """

    def __init__(self, **kw):
        self.x = {}
        self.count = 0
        self.producer = None
        self.dPending = {}
        self.dp = defer.Deferred()
        self._failure = None
        for name, value in kw.items():
            setattr(self, name, value)

    def registerProducer(self, producer, streaming):
        """Accept a push producer; RuntimeError if I already have one,
        TypeError for a pull producer."""
        if self.producer is not None:
            raise RuntimeError(
                "{!r} already has producer {!r}; it must unregister "
                "first".format(self, self.producer))
        if not streaming:
            raise TypeError(
                "ListConsumer works only with push producers "
                "(streaming=True)")
        self.producer = producer
        if self.dp.called:
            self.dp = defer.Deferred()

    def unregisterProducer(self):
        """Forget the producer: it has finished."""
        self.producer = None
        if not self.dp.called:
            self.dp.callback(None)

    def processItem(self, item):
        """The hook that turns a written item into a stored one: the item
        itself here."""
        return item

    def write(self, data):
        """Process ``data``, with the producer paused meanwhile (an item
        processed at once costs no Deferred)."""
        producer = self.producer
        if producer is not None:
            producer.pauseProducing()
        index = self.count
        self.count += 1
        try:
            result = self.processItem(data)
        except BaseException:
            result = Failure()
        if _isAwaitable(result):
            d = defer.maybeDeferred(lambda: result)
            d.addCallback(self._store, index)
            self.dPending[index] = d
            d.addBoth(self._settle, index, producer)
            return
        if not isinstance(result, Failure):
            self._store(result, index)
        self._settle(result, index, producer)

    def __call__(self):
        """D→the list of processed items in write order, when done."""
        return _notifier(self.dp).addCallback(self._allProcessed)

    def _store(self, result, index):
        self.x[index] = result

    def _settle(self, result, index, producer):
        self.dPending.pop(index, None)
        if isinstance(result, Failure) and self._failure is None:
            self._failure = result
        if producer is not None:
            producer.resumeProducing()

    def _allProcessed(self, _):
        d = defer.DeferredList(list(self.dPending.values()))
        return d.addCallback(self._results)

    def _results(self, _):
        if self._failure is not None:
            return self._failure
        return [self.x[index] for index in sorted(self.x)]


@implementer(IPushProducer)
class IterationProducer:
    """
    A push producer that writes the items of a Deferator to its consumer.

    While paused it neither fetches nor writes; it waits for
    ``resumeProducing`` (no polling). ``stopProducing`` also stops the
    Deferator.
    """

    def __init__(self, dr, consumer=None):
        if not isinstance(dr, Deferator):
            raise TypeError(
                "IterationProducer needs a Deferator, not {!r}".format(dr))
        self.dr = dr
        self.consumer = None
        self.paused = False
        self.running = True
        self._dResumed = None
        if consumer is not None:
            self.registerConsumer(consumer)

    def registerConsumer(self, consumer):
        """Make ``consumer`` (an IConsumer) mine and register myself with it
        as a push producer."""
        _checkConsumer(consumer)
        try:
            consumer.registerProducer(self, True)
        except RuntimeError:
            pass
        self.consumer = consumer

    def run(self):
        """
        D→my consumer, after writing every item to it and unregistering
        from it. Fails with the error of any item's Deferred (after
        unregistering); AttributeError now if I have no consumer.
        """
        if self.consumer is None:
            raise AttributeError(
                "{!r} has no consumer; call registerConsumer first".format(
                    self))
        return self._produce()

    def deferUntilDone(self):
        """D→my consumer, when the Deferator's ``d`` fires."""
        return _notifier(self.dr.d).addCallback(self._consumer)

    def pauseProducing(self):
        """Stop fetching and writing until resumeProducing."""
        self.paused = True

    def resumeProducing(self):
        """Go on fetching and writing."""
        self.paused = False
        self._wake()

    def stopProducing(self):
        """Write nothing more and stop the Deferator."""
        self.running = False
        self.dr.stop()
        self._wake()

    @defer.inlineCallbacks
    def _produce(self):
        dr = self.dr
        try:
            while self.running:
                if self.paused:
                    yield self._untilResumed()
                step = dr._stepAtHand()
                if step is None:
                    try:
                        dItem = dr._nextItem()
                    except StopIteration:
                        break
                    step = yield dItem
                value, isValid = step
                if self.paused:
                    yield self._untilResumed()
                if isValid and self.running:
                    self.consumer.write(value)
        finally:
            self.dr.stop()  # Already finished unless something failed.
            self.consumer.unregisterProducer()
        return self.consumer

    def _untilResumed(self):
        """A Deferred fired by resumeProducing or stopProducing if I am
        paused, else None."""
        if self.paused and self.running:
            self._dResumed = defer.Deferred()
            return self._dResumed

    def _wake(self):
        d, self._dResumed = self._dResumed, None
        if d is not None:
            d.callback(None)

    def _consumer(self, _):
        return self.consumer


def iteratorToProducer(iterator, consumer=None, wrapper=None):
    """
    D→an IterationProducer for ``iterator``, or None if it is not an
    iterator or is empty. With a ``consumer`` (an IConsumer) the producer
    runs to completion before the Deferred fires. With a ``wrapper`` each
    item is fetched as ``wrapper(fetch)``, for example with a deferToThread.
    """
    if wrapper is not None and not callable(wrapper):
        raise TypeError(
            "wrapper must be a callable that runs the fetch it is given, "
            "like deferToThread; got {!r}".format(wrapper))
    if consumer is not None:
        _checkConsumer(consumer)
    return _iteratorToProducer(iterator, consumer, wrapper)


@defer.inlineCallbacks
def _iteratorToProducer(iterator, consumer, wrapper):
    if not isIterator(iterator):
        return None
    prefetcher = Prefetcherator()
    if not (yield prefetcher.setup(iterator)):
        return None
    fetcher = (prefetcher.getNext,)
    if wrapper is not None:
        fetcher = (wrapper,) + fetcher
    producer = IterationProducer(
        Deferator(repr(iterator), *fetcher), consumer)
    if consumer is not None:
        yield producer.run()
    return producer
