"""
Tests for asynqueue.iteration: Delay, Deferator, Prefetcherator,
ListConsumer, IterationProducer and iteratorToProducer.

Every asynchronous test also checks that it leaves no reactor system event
trigger behind; trial's dirty-reactor check covers DelayedCalls.
"""
import re

from hypothesis import given, strategies as st
from twisted.internet import defer, reactor, task
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from asynqueue.errors import ImplementationError, NotReadyError
from asynqueue.iteration import (
    Deferator, Delay, IterationProducer, ListConsumer, Prefetcherator,
    deferToDelay, isIterator, iteratorToProducer)
from support import collect


# --- Helpers ----------------------------------------------------------------

def asynqueueTriggers():
    """The reactor system event triggers that asynqueue code registered."""
    return [
        (name, trigger)
        for name, event in reactor._eventTriggers.items()
        for phase in (event.before, event.during, event.after)
        for trigger in phase
        if getattr(trigger[0], "__module__", "").startswith("asynqueue")]


def shutdownTriggersOf(delay):
    """The 'before shutdown' triggers that belong to ``delay``."""
    event = reactor._eventTriggers.get("shutdown")
    return [trigger for trigger in (event.before if event else [])
            if getattr(trigger[0], "__self__", None) is delay]


def turn():
    """D→None after one reactor turn."""
    return task.deferLater(reactor, 0, lambda: None)


@defer.inlineCallbacks
def spin(turns=5):
    """Let the reactor run a few turns."""
    for _ in range(turns):
        yield turn()


def generate(items, pulled=None):
    """A generator over ``items`` that appends each one to ``pulled`` as
    it is taken."""
    for item in items:
        if pulled is not None:
            pulled.append(item)
        yield item


def failingGenerator(items, error):
    """A generator over ``items`` that then raises ``error``."""
    yield from items
    raise error


def generatorFunction(n):
    yield from range(n)


def abc():
    yield from "abc"


class ScriptedFetcher:
    """A Deferator fetcher returning the given (value, isValid, moreLeft)
    tuples, or raising the exceptions among them; records its calls."""

    def __init__(self, *steps):
        self.steps = list(steps)
        self.calls = []

    def __call__(self, *args, **kw):
        self.calls.append((args, kw))
        step = self.steps.pop(0)
        if isinstance(step, Exception):
            return defer.fail(step)
        return defer.succeed(step)


class ManualFetcher:
    """A fetcher whose Deferreds the test fires by hand."""

    def __init__(self):
        self.pending = []

    def __call__(self):
        d = defer.Deferred()
        self.pending.append(d)
        return d

    def fire(self, result):
        self.pending.pop(0).callback(result)


@implementer(IConsumer)
class RecordingConsumer:
    """Records writes; calls ``onWrite(self, data)`` after each one."""

    def __init__(self, onWrite=None):
        self.items = []
        self.producer = None
        self.registrations = []
        self.unregistered = 0
        self.onWrite = onWrite

    def registerProducer(self, producer, streaming):
        self.registrations.append((producer, streaming))
        self.producer = producer

    def unregisterProducer(self):
        self.unregistered += 1

    def write(self, data):
        self.items.append(data)
        if self.onWrite is not None:
            self.onWrite(self, data)


@implementer(IPushProducer)
class RecordingProducer:
    """A push producer that records the calls made to it."""

    def __init__(self):
        self.calls = []

    def pauseProducing(self):
        self.calls.append("pause")

    def resumeProducing(self):
        self.calls.append("resume")

    def stopProducing(self):
        self.calls.append("stop")


class CleanReactorTestCase(unittest.TestCase):
    """Fails a test that leaves an asynqueue system event trigger
    registered."""

    def setUp(self):
        self.addCleanup(
            lambda: self.assertEqual(asynqueueTriggers(), []))


# --- deferToDelay and Delay -------------------------------------------------

class DelayTest(CleanReactorTestCase):

    def test_defaults(self):
        delay = Delay()
        self.assertEqual(delay.interval, 0.001)
        self.assertEqual(delay.backoff, 1.10)
        self.assertIsNone(delay.timeout)
        self.assertEqual(delay.pendingCalls, {})
        self.assertIsNone(delay.triggerID)

    def test_explicitSettings(self):
        delay = Delay(0.5, 1.2, 3.0)
        self.assertEqual(
            (delay.interval, delay.backoff, delay.timeout), (0.5, 1.2, 3.0))

    def test_timeoutStoredOnlyWhenTruthy(self):
        delay = Delay(timeout=0)
        self.assertNotIn("timeout", vars(delay))
        self.assertIsNone(delay.timeout)

    def test_backoffRange(self):
        for backoff in (1.0, 1.3):
            self.assertEqual(Delay(backoff=backoff).backoff, backoff)
        for backoff in (0.99, 1.31, 2):
            self.assertRaises(ValueError, Delay, backoff=backoff)

    def test_idleDelayRegistersNoTrigger(self):
        delay = Delay()
        self.assertEqual(shutdownTriggersOf(delay), [])

    @defer.inlineCallbacks
    def test_callFiresNoneAndRemovesTrigger(self):
        delay = Delay()
        d = delay(0.001)
        self.assertNoResult(d)
        self.assertEqual(len(delay.pendingCalls), 1)
        self.assertEqual(len(shutdownTriggersOf(delay)), 1)
        result = yield d
        self.assertIsNone(result)
        self.assertEqual(delay.pendingCalls, {})
        self.assertIsNone(delay.triggerID)
        self.assertEqual(shutdownTriggersOf(delay), [])

    @defer.inlineCallbacks
    def test_oneTriggerForManyPendingCalls(self):
        delay = Delay()
        ds = [delay(0), delay(), delay(0.002)]
        self.assertEqual(len(shutdownTriggersOf(delay)), 1)
        yield defer.gatherResults(ds)
        self.assertEqual(shutdownTriggersOf(delay), [])

    @defer.inlineCallbacks
    def test_zeroMeansNextTurn(self):
        d = Delay()(0)
        self.assertNoResult(d)
        yield d

    @defer.inlineCallbacks
    def test_deferToDelayLeavesNothing(self):
        d = deferToDelay(0.001)
        self.assertEqual(len(asynqueueTriggers()), 1)
        result = yield d
        self.assertIsNone(result)
        self.assertEqual(asynqueueTriggers(), [])

    @defer.inlineCallbacks
    def test_manyDeferToDelaysLeaveNothing(self):
        ds = [deferToDelay(0) for _ in range(20)]
        self.assertEqual(len(asynqueueTriggers()), 20)
        yield defer.gatherResults(ds)
        self.assertEqual(asynqueueTriggers(), [])

    def test_shutdownFiresEveryPendingDelay(self):
        delay = Delay()
        ds = [delay(60), delay(120)]
        delay.shutdown()
        for d in ds:
            self.assertIsNone(self.successResultOf(d))
        self.assertEqual(delay.pendingCalls, {})
        self.assertEqual(shutdownTriggersOf(delay), [])
        self.assertIsNone(self.successResultOf(delay(60)))
        self.assertEqual(shutdownTriggersOf(delay), [])

    def test_reactorShutdownTrigger(self):
        delay = Delay()
        d = delay(60)
        handle = delay.triggerID
        [trigger] = shutdownTriggersOf(delay)
        callable_, args, kw = trigger
        callable_(*args, **kw)
        # The reactor drops a trigger once it has run it; do it by hand.
        reactor.removeSystemEventTrigger(handle)
        self.assertIsNone(self.successResultOf(d))
        self.assertTrue(delay.isShutdown)
        self.assertIsNone(delay.triggerID)

    def test_cancelCancelsTheDelayedCall(self):
        delay = Delay()
        d = delay(60)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(delay.pendingCalls, {})
        self.assertEqual(shutdownTriggersOf(delay), [])

    def test_untilEventNeedsCallable(self):
        self.assertRaises(TypeError, Delay().untilEvent, "not callable")

    def test_untilEventAlreadyTrue(self):
        calls = []
        d = Delay().untilEvent(lambda *a, **kw: calls.append((a, kw)) or 1,
                               2, x=3)
        self.assertIs(self.successResultOf(d), True)
        self.assertEqual(calls, [((2,), {"x": 3})])

    @defer.inlineCallbacks
    def test_untilEventBecomesTrue(self):
        calls = []

        def checker():
            calls.append(None)
            return len(calls) >= 5

        delay = Delay()
        result = yield delay.untilEvent(checker)
        self.assertIs(result, True)
        self.assertEqual(len(calls), 5)
        self.assertEqual(shutdownTriggersOf(delay), [])

    @defer.inlineCallbacks
    def test_untilEventTimesOut(self):
        delay = Delay(timeout=0.02)
        result = yield delay.untilEvent(lambda: False)
        self.assertIs(result, False)
        self.assertEqual(delay.pendingCalls, {})

    @defer.inlineCallbacks
    def test_untilEventShutDownMidWait(self):
        delay = Delay()
        calls, pendingAtShutdown = [], []

        def shutDown():
            pendingAtShutdown.append(len(delay.pendingCalls))
            delay.shutdown()

        def checker():
            calls.append(None)
            if len(calls) == 2:
                reactor.callLater(0, shutDown)
            return False

        result = yield delay.untilEvent(checker)
        self.assertIsNone(result)
        self.assertEqual(pendingAtShutdown, [1])
        self.assertEqual(delay.pendingCalls, {})

    def test_untilEventAfterShutdown(self):
        delay = Delay()
        delay.shutdown()
        d = delay.untilEvent(lambda: False)
        self.assertIs(self.successResultOf(d), True)


# --- isIterator -------------------------------------------------------------

class Counter:
    """An iterator class of its own."""

    def __init__(self):
        self.n = 0

    def __iter__(self):
        return self

    def __next__(self):
        self.n += 1
        return self.n


class IterableOnly:
    def __iter__(self):
        return iter([])


class IsIteratorTest(unittest.SynchronousTestCase):

    def test_deferredIsNot(self):
        self.assertFalse(isIterator(defer.Deferred()))
        self.assertFalse(isIterator(defer.succeed(1)))

    def test_builtInsAreNot(self):
        for obj in ("ab", [1], (1,), bytearray(b"a"), memoryview(b"a"),
                    {1: 2}, {1}, frozenset([1])):
            self.assertFalse(isIterator(obj), obj)
            self.assertIsInstance(obj, Deferator.builtIns)

    def test_rangeAndBytesAreNot(self):
        self.assertFalse(isIterator(range(3)))
        self.assertFalse(isIterator(b"abc"))

    def test_generatorsAndGeneratorFunctions(self):
        self.assertTrue(isIterator(generatorFunction(2)))
        self.assertTrue(isIterator(generatorFunction))

    def test_iterators(self):
        self.assertTrue(isIterator(map(str, [1])))
        self.assertTrue(isIterator(iter([1])))
        self.assertTrue(isIterator(Counter()))
        self.assertFalse(isIterator(IterableOnly()))
        self.assertFalse(isIterator(object()))
        self.assertFalse(isIterator(len))

    def test_sameAsClassmethod(self):
        for obj in (map(str, []), [], generatorFunction, range(1), 3):
            self.assertEqual(isIterator(obj), Deferator.isIterator(obj))


# --- Deferator --------------------------------------------------------------

class DeferatorTest(CleanReactorTestCase):

    def assertDone(self, dr, completed):
        self.assertFalse(dr.moreLeft)
        self.assertIs(self.successResultOf(dr.d), completed)

    def test_representationOfString(self):
        dr = Deferator("<my iterator>", ScriptedFetcher())
        self.assertEqual(dr.representation, "my iterator")

    def test_representationOfObject(self):
        iterator = iter([1])
        self.assertEqual(Deferator(iterator).representation, repr(iterator))

    def test_repr(self):
        dr = Deferator("<thing>", ScriptedFetcher())
        self.assertRegex(
            repr(dr),
            r"^<Deferator wrapping of\n  <thing>,\nat 0x[0-9a-f]{12}>$")
        self.assertIn("{:012x}".format(id(dr)), repr(dr))

    def test_nonIteratorIsEmpty(self):
        for obj in (object(), [1, 2], range(3), "a rep without fetcher"):
            dr = Deferator(obj)
            self.assertEqual(dr.representation, repr([]))
            self.assertDone(dr, True)
            self.assertEqual(list(dr), [])

    @defer.inlineCallbacks
    def test_generator(self):
        dr = Deferator(generate("abc"))
        values = yield collect(dr)
        self.assertEqual(values, ["a", "b", "c"])
        self.assertDone(dr, True)

    @defer.inlineCallbacks
    def test_mapObject(self):
        values = yield collect(Deferator(map(lambda x: x * 2, [1, 2, 3])))
        self.assertEqual(values, [2, 4, 6])

    @defer.inlineCallbacks
    def test_generatorFunctionIsCalled(self):
        values = yield collect(Deferator(abc))
        self.assertEqual(values, ["a", "b", "c"])

    @defer.inlineCallbacks
    def test_prefetcheratorNotSetUp(self):
        dr = Deferator(Prefetcherator())
        values = yield collect(dr)
        self.assertEqual(values, [None])
        self.assertDone(dr, True)

    @defer.inlineCallbacks
    def test_noneValuesPassThrough(self):
        values = yield collect(Deferator(iter([None, 1, None])))
        self.assertEqual(values, [None, 1, None])

    def test_emptyIterator(self):
        dr = Deferator(iter([]))
        self.assertDone(dr, True)
        self.assertRaises(StopIteration, next, dr)

    def test_iteratorRaisingMidway(self):
        with self.assertLogs("asynqueue.iteration", "WARNING") as logs:
            dr = Deferator(failingGenerator([1, 2], ValueError("boom")))
            values = self.successResultOf(collect(dr))
        self.assertEqual(values, [1, 2])
        self.assertDone(dr, True)
        self.assertIn("ValueError: boom", logs.output[0])

    @defer.inlineCallbacks
    def test_fetcherGetsArgsAndKeywords(self):
        fetcher = ScriptedFetcher((1, True, True), (2, True, False))
        dr = Deferator("rep", fetcher, "a", key="k")
        self.assertEqual(dr.callTuple, (fetcher, ("a",), {"key": "k"}))
        values = yield collect(dr)
        self.assertEqual(values, [1, 2])
        self.assertEqual(fetcher.calls, [(("a",), {"key": "k"})] * 2)
        self.assertDone(dr, True)

    @defer.inlineCallbacks
    def test_invalidEndFiresNoneAndEnds(self):
        fetcher = ScriptedFetcher((1, True, True), (None, False, False))
        dr = Deferator("rep", fetcher)
        values = yield collect(dr)
        self.assertEqual(values, [1, None])
        self.assertDone(dr, True)
        self.assertEqual(len(fetcher.calls), 2)

    @defer.inlineCallbacks
    def test_invalidItemWithMoreLeftIsSkipped(self):
        fetcher = ScriptedFetcher(
            (1, True, True), ("junk", False, True), (2, True, False))
        values = yield collect(Deferator("rep", fetcher))
        self.assertEqual(values, [1, 2])
        self.assertEqual(len(fetcher.calls), 3)

    def test_notReadyError(self):
        fetcher = ManualFetcher()
        dr = Deferator("rep", fetcher)
        d1 = next(dr)
        self.assertRaises(NotReadyError, next, dr)
        fetcher.fire(("a", True, True))
        self.assertEqual(self.successResultOf(d1), "a")
        d2 = next(dr)
        fetcher.fire(("b", True, False))
        self.assertEqual(self.successResultOf(d2), "b")
        self.assertRaises(StopIteration, next, dr)
        self.assertDone(dr, True)

    def test_notReadyWhileSkippingInvalidItems(self):
        fetcher = ManualFetcher()
        dr = Deferator("rep", fetcher)
        d = next(dr)
        fetcher.fire(("junk", False, True))
        self.assertNoResult(d)
        self.assertRaises(NotReadyError, next, dr)
        fetcher.fire(("ok", True, False))
        self.assertEqual(self.successResultOf(d), "ok")

    @defer.inlineCallbacks
    def test_stopFromTheDeferred(self):
        dr = Deferator(generate(range(10)))
        values = []
        for d in dr:
            values.append((yield d))
            if len(values) == 2:
                d.stop()
        self.assertEqual(values, [0, 1])
        dr.stop()
        self.assertRaises(StopIteration, next, dr)
        self.assertDone(dr, False)

    def test_stopWhileFetching(self):
        fetcher = ManualFetcher()
        dr = Deferator("rep", fetcher)
        d = next(dr)
        dr.stop()
        fetcher.fire(("a", True, True))
        self.assertEqual(self.successResultOf(d), "a")
        self.assertRaises(StopIteration, next, dr)
        self.assertDone(dr, False)

    def test_fetchFailure(self):
        fetcher = ScriptedFetcher((1, True, True), KeyError("gone"))
        dr = Deferator("rep", fetcher)
        self.assertEqual(self.successResultOf(next(dr)), 1)
        self.failureResultOf(next(dr), KeyError)
        self.assertDone(dr, False)
        self.assertRaises(StopIteration, next, dr)

    def test_malformedFetchIsAFailure(self):
        dr = Deferator("rep", lambda: defer.succeed("not a tuple"))
        self.failureResultOf(next(dr), ValueError)
        self.assertDone(dr, False)

    def test_attributesForwardedToDone(self):
        dr = Deferator(iter([1]))
        results = []
        dr.addCallback(results.append)
        self.assertFalse(dr.called)
        self.successResultOf(collect(dr))
        self.assertEqual(results, [True])
        self.assertRaises(AttributeError, getattr, dr, "noSuchAttribute")

    def test_chainDeferred(self):
        dr = Deferator(iter([]))
        other = defer.Deferred()
        dr.chainDeferred(other)
        self.assertIs(self.successResultOf(other), True)

    @defer.inlineCallbacks
    def test_wrapsPrefetcherator(self):
        pf = Prefetcherator()
        yield pf.setup(iter("xy"))
        values = yield collect(Deferator(pf))
        self.assertEqual(values, ["x", "y"])

    def test_iteratorOfUnfiredDeferreds(self):
        sources = [defer.Deferred(), defer.Deferred()]
        dr = Deferator(iter(sources))
        d = next(dr)
        sources[0].callback("a")
        self.assertNoResult(d)
        sources[1].callback("b")
        self.assertEqual(self.successResultOf(d), "a")
        self.assertEqual(self.successResultOf(next(dr)), "b")
        self.assertRaises(StopIteration, next, dr)
        self.assertDone(dr, True)


class DeferatorPropertyTest(unittest.SynchronousTestCase):

    @given(st.lists(st.one_of(st.none(), st.integers(), st.text())))
    def test_yieldsEveryItem(self, items):
        dr = Deferator(iter(items))
        self.assertEqual(self.successResultOf(collect(dr)), items)
        self.assertIs(self.successResultOf(dr.d), True)


# --- Prefetcherator ---------------------------------------------------------

class PrefetcheratorTest(CleanReactorTestCase):

    def getAll(self, pf, n):
        return [self.successResultOf(pf.getNext()) for _ in range(n)]

    def test_lastFetchIsTheItemAhead(self):
        """0.9 exposed the prefetched (value, isValid) as lastFetch."""
        pf = Prefetcherator()
        self.assertTrue(self.successResultOf(pf.setup(iter([5, 6]))))
        self.assertEqual(pf.lastFetch, (5, True))
        self.successResultOf(pf.getNext())
        self.assertEqual(pf.lastFetch, (6, True))
        self.successResultOf(pf.getNext())
        self.assertEqual(pf.lastFetch, (None, False))

    def test_slots(self):
        self.assertTrue(
            {"ID", "nextCallTuple", "lastFetch"} <= set(
                Prefetcherator.__slots__))
        pf = Prefetcherator("abc")
        self.assertEqual(pf.ID, "abc")
        self.assertIsNone(Prefetcherator().ID)
        self.assertRaises(AttributeError, setattr, pf, "other", 1)

    def test_iterator(self):
        pf = Prefetcherator()
        self.assertFalse(pf.isBusy())
        self.assertIs(self.successResultOf(pf.setup(iter([1, None, 3]))),
                      True)
        self.assertTrue(pf.isBusy())
        self.assertEqual(self.getAll(pf, 5), [
            (1, True, True), (None, True, True), (3, True, False),
            (None, False, False), (None, False, False)])
        self.assertFalse(pf.isBusy())

    def test_staysOneAhead(self):
        pulled = []
        pf = Prefetcherator()
        pf.setup(generate("abc", pulled))
        self.assertEqual(pulled, ["a"])
        self.successResultOf(pf.getNext())
        self.assertEqual(pulled, ["a", "b"])

    def test_emptyIterator(self):
        pf = Prefetcherator()
        self.assertIs(self.successResultOf(pf.setup(iter([]))), False)
        self.assertFalse(pf.isBusy())
        self.assertEqual(self.getAll(pf, 1), [(None, False, False)])

    def test_unusableArguments(self):
        pf = Prefetcherator()
        for args in ((), ([1, 2],), (42,)):
            self.assertIs(self.successResultOf(pf.setup(*args)), False)
            self.assertFalse(pf.isBusy())

    def test_busy(self):
        pf = Prefetcherator()
        pf.setup(iter([1, 2]))
        self.assertIs(self.successResultOf(pf.setup(iter([3]))), False)
        self.assertEqual(self.getAll(pf, 2), [(1, True, True),
                                              (2, True, False)])

    def test_reusableAfterTheEnd(self):
        pf = Prefetcherator()
        pf.setup(iter([1]))
        self.getAll(pf, 1)
        self.assertIs(self.successResultOf(pf.setup(iter([2]))), True)
        self.assertEqual(self.getAll(pf, 1), [(2, True, False)])

    def test_callableWithArguments(self):
        calls = []

        def fetch(*args, **kw):
            calls.append((args, kw))
            if len(calls) > 2:
                raise StopIteration
            return len(calls)

        pf = Prefetcherator()
        self.assertIs(self.successResultOf(pf.setup(fetch, 1, k=2)), True)
        self.assertEqual(self.getAll(pf, 3), [
            (1, True, True), (2, True, False), (None, False, False)])
        self.assertEqual(calls, [((1,), {"k": 2})] * 3)

    def test_generatorFunction(self):
        pf = Prefetcherator()
        self.assertIs(
            self.successResultOf(pf.setup(generatorFunction, 2)), True)
        self.assertEqual(self.getAll(pf, 2), [(0, True, True),
                                              (1, True, False)])

    def test_asynchronousFetchesAreSerialized(self):
        fetcher = ManualFetcher()
        pf = Prefetcherator()
        dSetup = pf.setup(fetcher)
        d1, d2, d3 = pf.getNext(), pf.getNext(), pf.getNext()
        self.assertEqual(len(fetcher.pending), 1)
        fetcher.fire("a")
        self.assertIs(self.successResultOf(dSetup), True)
        fetcher.fire("b")
        self.assertEqual(self.successResultOf(d1), ("a", True, True))
        fetcher.pending.pop(0).errback(StopIteration())
        self.assertEqual(self.successResultOf(d2), ("b", True, False))
        self.assertEqual(self.successResultOf(d3), (None, False, False))
        self.assertEqual(fetcher.pending, [])

    def test_errorEndsTheIterationAndIsLogged(self):
        pf = Prefetcherator("myID")
        with self.assertLogs("asynqueue.iteration", "WARNING") as logs:
            pf.setup(failingGenerator([1], RuntimeError("bad item")))
            values = self.getAll(pf, 2)
        self.assertEqual(values, [(1, True, False), (None, False, False)])
        self.assertIn("'myID'", logs.output[0])
        self.assertIn("RuntimeError: bad item", logs.output[0])

    def test_stopIterationIsNotLogged(self):
        pf = Prefetcherator()
        with self.assertNoLogs("asynqueue.iteration"):
            pf.setup(iter([1]))
            self.getAll(pf, 2)


# --- ListConsumer -----------------------------------------------------------

class ListConsumerTest(CleanReactorTestCase):

    def test_providesIConsumer(self):
        self.assertTrue(verifyObject(IConsumer, ListConsumer()))

    def test_keywordsBecomeAttributes(self):
        consumer = ListConsumer(foo=1, processItem=str)
        self.assertEqual(consumer.foo, 1)
        self.assertEqual(consumer.processItem(2), "2")
        self.assertEqual((consumer.x, consumer.count), ({}, 0))

    def test_registerProducerTwice(self):
        consumer = ListConsumer()
        consumer.registerProducer(RecordingProducer(), True)
        self.assertRaises(RuntimeError, consumer.registerProducer,
                          RecordingProducer(), True)

    def test_pullProducerRefused(self):
        consumer = ListConsumer()
        self.assertRaises(TypeError, consumer.registerProducer,
                          RecordingProducer(), False)
        self.assertIsNone(consumer.producer)

    def test_synchronousProcessItem(self):
        consumer = ListConsumer(processItem=lambda item: item * 10)
        producer = RecordingProducer()
        consumer.registerProducer(producer, True)
        d = consumer()
        consumer.write(1)
        consumer.write(2)
        self.assertEqual(producer.calls, ["pause", "resume"] * 2)
        self.assertNoResult(d)
        consumer.unregisterProducer()
        self.assertEqual(self.successResultOf(d), [10, 20])
        self.assertEqual(consumer.dPending, {})
        self.assertEqual(consumer.x, {0: 10, 1: 20})

    def test_asynchronousProcessItemKeepsWriteOrder(self):
        pending = []

        def processItem(item):
            d = defer.Deferred()
            pending.append((d, item))
            return d

        consumer = ListConsumer(processItem=processItem)
        producer = RecordingProducer()
        consumer.registerProducer(producer, True)
        for item in "abc":
            consumer.write(item)
        self.assertEqual(producer.calls, ["pause"] * 3)
        consumer.unregisterProducer()
        d = consumer()
        for dItem, item in reversed(pending[1:]):
            dItem.callback(item.upper())
        self.assertNoResult(d)
        pending[0][0].callback("A")
        self.assertEqual(self.successResultOf(d), ["A", "B", "C"])
        self.assertEqual(producer.calls, ["pause"] * 3 + ["resume"] * 3)

    def test_processItemFailure(self):
        def processItem(item):
            if item == "bad":
                raise ValueError("cannot process")
            return item

        consumer = ListConsumer(processItem=processItem)
        producer = RecordingProducer()
        consumer.registerProducer(producer, True)
        for item in ("ok", "bad", "fine"):
            consumer.write(item)
        self.assertEqual(producer.calls, ["pause", "resume"] * 3)
        consumer.unregisterProducer()
        self.failureResultOf(consumer(), ValueError)

    def test_writeWithoutProducer(self):
        consumer = ListConsumer()
        consumer.write("x")
        consumer.unregisterProducer()
        self.assertEqual(self.successResultOf(consumer()), ["x"])

    def test_registerAgainAfterUnregistering(self):
        consumer = ListConsumer()
        consumer.registerProducer(RecordingProducer(), True)
        consumer.write(1)
        consumer.unregisterProducer()
        consumer.unregisterProducer()
        consumer.registerProducer(RecordingProducer(), True)
        d = consumer()
        consumer.write(2)
        self.assertNoResult(d)
        consumer.unregisterProducer()
        self.assertEqual(self.successResultOf(d), [1, 2])


# --- IterationProducer ------------------------------------------------------

class IterationProducerTest(CleanReactorTestCase):

    def test_providesIPushProducer(self):
        producer = IterationProducer(Deferator(iter([])))
        self.assertTrue(verifyObject(IPushProducer, producer))

    def test_needsDeferator(self):
        self.assertRaises(TypeError, IterationProducer, iter([1]))

    def test_consumerMustProvideIConsumer(self):
        dr = Deferator(iter([1]))
        self.assertRaises(ImplementationError, IterationProducer, dr,
                          object())
        producer = IterationProducer(dr)
        self.assertRaises(ImplementationError, producer.registerConsumer,
                          object())

    def test_registerConsumer(self):
        consumer = RecordingConsumer()
        producer = IterationProducer(Deferator(iter([1])), consumer)
        self.assertIs(producer.consumer, consumer)
        self.assertEqual(consumer.registrations, [(producer, True)])

    def test_registerConsumerIgnoresRuntimeError(self):
        consumer = ListConsumer()
        consumer.registerProducer(RecordingProducer(), True)
        producer = IterationProducer(Deferator(iter([1])), consumer)
        self.assertIs(producer.consumer, consumer)

    def test_runWithoutConsumer(self):
        producer = IterationProducer(Deferator(iter([1])))
        self.assertRaises(AttributeError, producer.run)

    def test_pauseAndResumeToggle(self):
        producer = IterationProducer(Deferator(iter([])))
        self.assertFalse(producer.paused)
        producer.pauseProducing()
        self.assertTrue(producer.paused)
        producer.resumeProducing()
        self.assertFalse(producer.paused)

    @defer.inlineCallbacks
    def test_runIntoListConsumer(self):
        dr = Deferator(generate([1, None, 3]))
        consumer = ListConsumer()
        producer = IterationProducer(dr, consumer)
        result = yield producer.run()
        self.assertIs(result, consumer)
        self.assertIsNone(consumer.producer)
        self.assertEqual((yield consumer()), [1, None, 3])
        self.assertIs(self.successResultOf(dr.d), True)

    @defer.inlineCallbacks
    def test_runWithAsynchronousProcessItem(self):
        def processItem(item):
            return task.deferLater(reactor, 0, lambda: item * 2)

        consumer = ListConsumer(processItem=processItem)
        yield IterationProducer(Deferator(iter(range(5))), consumer).run()
        self.assertEqual((yield consumer()), [0, 2, 4, 6, 8])

    @defer.inlineCallbacks
    def test_writesNothingWhilePaused(self):
        def pauseAtSecond(consumer, data):
            if len(consumer.items) == 2:
                consumer.producer.pauseProducing()

        pulled = []
        consumer = RecordingConsumer(pauseAtSecond)
        producer = IterationProducer(
            Deferator(generate(range(6), pulled)), consumer)
        callsBefore = set(reactor.getDelayedCalls())
        d = producer.run()
        self.assertEqual(consumer.items, [0, 1])
        # Waiting out the pause schedules nothing: no polling.
        self.assertEqual(set(reactor.getDelayedCalls()), callsBefore)
        pulledWhenPaused = list(pulled)
        yield spin()
        self.assertEqual(consumer.items, [0, 1])
        self.assertEqual(pulled, pulledWhenPaused)
        self.assertNoResult(d)
        producer.resumeProducing()
        self.assertIs((yield d), consumer)
        self.assertEqual(consumer.items, list(range(6)))
        self.assertEqual(consumer.unregistered, 1)

    def test_itemArrivingWhilePausedWaitsForResume(self):
        fetcher = ManualFetcher()
        consumer = RecordingConsumer()
        producer = IterationProducer(Deferator("rep", fetcher), consumer)
        d = producer.run()
        producer.pauseProducing()
        fetcher.fire(("a", True, False))
        self.assertEqual(consumer.items, [])
        producer.resumeProducing()
        self.assertEqual(consumer.items, ["a"])
        self.assertIs(self.successResultOf(d), consumer)

    def test_stopProducing(self):
        def stopAtSecond(consumer, data):
            if len(consumer.items) == 2:
                consumer.producer.stopProducing()

        dr = Deferator(generate(range(10)))
        consumer = RecordingConsumer(stopAtSecond)
        d = IterationProducer(dr, consumer).run()
        self.assertIs(self.successResultOf(d), consumer)
        self.assertEqual(consumer.items, [0, 1])
        self.assertEqual(consumer.unregistered, 1)
        self.assertIs(self.successResultOf(dr.d), False)

    def test_stopWhilePaused(self):
        def pauseAtFirst(consumer, data):
            consumer.producer.pauseProducing()

        dr = Deferator(generate(range(10)))
        consumer = RecordingConsumer(pauseAtFirst)
        producer = IterationProducer(dr, consumer)
        d = producer.run()
        self.assertNoResult(d)
        producer.stopProducing()
        self.assertIs(self.successResultOf(d), consumer)
        self.assertEqual(consumer.items, [0])
        self.assertIs(self.successResultOf(dr.d), False)

    def test_stopWhileItemPending(self):
        fetcher = ManualFetcher()
        consumer = RecordingConsumer()
        producer = IterationProducer(Deferator("rep", fetcher), consumer)
        d = producer.run()
        producer.stopProducing()
        fetcher.fire(("late", True, True))
        self.assertEqual(consumer.items, [])
        self.assertIs(self.successResultOf(d), consumer)

    def test_itemErrorFailsRun(self):
        fetcher = ScriptedFetcher(
            (1, True, True), (2, True, True), KeyError("lost"))
        dr = Deferator("rep", fetcher)
        consumer = RecordingConsumer()
        d = IterationProducer(dr, consumer).run()
        self.failureResultOf(d, KeyError)
        self.assertEqual(consumer.items, [1, 2])
        self.assertEqual(consumer.unregistered, 1)
        self.assertIs(self.successResultOf(dr.d), False)

    def test_writeErrorFailsRunAndStopsDeferator(self):
        def refuse(consumer, data):
            raise OSError("consumer full")

        dr = Deferator(generate(range(3)))
        consumer = RecordingConsumer(refuse)
        producer = IterationProducer(dr, consumer)
        dDone = producer.deferUntilDone()
        self.failureResultOf(producer.run(), OSError)
        self.assertEqual(consumer.unregistered, 1)
        self.assertIs(self.successResultOf(dDone), consumer)
        self.assertIs(self.successResultOf(dr.d), False)

    def test_invalidLastItemIsNotWritten(self):
        fetcher = ScriptedFetcher((1, True, True), (None, False, False))
        consumer = RecordingConsumer()
        d = IterationProducer(Deferator("rep", fetcher), consumer).run()
        self.assertIs(self.successResultOf(d), consumer)
        self.assertEqual(consumer.items, [1])

    def test_emptyDeferator(self):
        consumer = RecordingConsumer()
        dr = Deferator(iter([]))
        d = IterationProducer(dr, consumer).run()
        self.assertIs(self.successResultOf(d), consumer)
        self.assertEqual((consumer.items, consumer.unregistered), ([], 1))

    def test_deferUntilDone(self):
        fetcher = ManualFetcher()
        dr = Deferator("rep", fetcher)
        consumer = RecordingConsumer()
        producer = IterationProducer(dr, consumer)
        dDone = producer.deferUntilDone()
        d = producer.run()
        self.assertNoResult(dDone)
        fetcher.fire(("a", True, False))
        self.assertIs(self.successResultOf(dDone), consumer)
        self.assertIs(self.successResultOf(d), consumer)
        self.assertIs(self.successResultOf(dr.d), True)


# --- iteratorToProducer -----------------------------------------------------

class IteratorToProducerTest(CleanReactorTestCase):

    def test_notAnIterator(self):
        for obj in ([1, 2], range(3), "abc", 7):
            self.assertIsNone(self.successResultOf(iteratorToProducer(obj)))

    def test_emptyIterator(self):
        consumer = RecordingConsumer()
        d = iteratorToProducer(iter([]), consumer)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(consumer.registrations, [])

    def test_wrapperMustBeCallable(self):
        error = self.assertRaises(
            TypeError, iteratorToProducer, iter([1]), wrapper=3)
        self.assertIn("wrapper", str(error))

    def test_consumerMustProvideIConsumer(self):
        self.assertRaises(
            ImplementationError, iteratorToProducer, iter([1]), object())

    @defer.inlineCallbacks
    def test_withoutConsumer(self):
        pulled = []
        producer = yield iteratorToProducer(generate("abc", pulled))
        self.assertIsInstance(producer, IterationProducer)
        self.assertIsNone(producer.consumer)
        self.assertEqual(pulled, ["a"])
        consumer = ListConsumer()
        producer.registerConsumer(consumer)
        yield producer.run()
        self.assertEqual((yield consumer()), ["a", "b", "c"])

    @defer.inlineCallbacks
    def test_withConsumerRunsToCompletion(self):
        consumer = ListConsumer()
        producer = yield iteratorToProducer(map(str, range(4)), consumer)
        self.assertIs(producer.consumer, consumer)
        self.assertIsNone(consumer.producer)
        self.assertIs(self.successResultOf(producer.dr.d), True)
        self.assertEqual((yield consumer()), ["0", "1", "2", "3"])

    @defer.inlineCallbacks
    def test_withWrapper(self):
        wrapped = []

        def wrapper(f):
            wrapped.append(f)
            return task.deferLater(reactor, 0, f)

        consumer = ListConsumer()
        producer = yield iteratorToProducer(
            iter([None, 2, 3]), consumer, wrapper)
        self.assertEqual((yield consumer()), [None, 2, 3])
        self.assertEqual(len(wrapped), 3)
        self.assertEqual(producer.dr.representation.split(" ")[0],
                         "list_iterator")

    @defer.inlineCallbacks
    def test_generatorFunction(self):
        consumer = ListConsumer()
        yield iteratorToProducer(abc, consumer)
        self.assertEqual((yield consumer()), ["a", "b", "c"])

    @defer.inlineCallbacks
    def test_iteratorRaisingMidway(self):
        consumer = ListConsumer()
        with self.assertLogs("asynqueue.iteration", "WARNING"):
            yield iteratorToProducer(
                failingGenerator("ab", OSError("disk")), consumer)
        self.assertEqual((yield consumer()), ["a", "b"])


def test_representationStripsOnlyTheEnds():
    assert Deferator("<a<b>c>", ScriptedFetcher()).representation == "a<b>c"
    assert re.match(r"<Deferator", repr(Deferator(object())))
