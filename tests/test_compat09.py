"""
AsynQueue 0.9-era usage, written as 0.9's users and worker authors wrote
it, running unchanged on asynqueue 1.0.
"""
from twisted.internet import defer
from twisted.internet.interfaces import IConsumer
from twisted.trial import unittest
from zope.interface import implementer

import asynqueue
from asynqueue import base, errors, iteration, tasks, util
from asynqueue.interfaces import IWorker


def test_topLevelExports():
    for name in ("AsyncWorker", "TaskQueue", "showResult", "Info",
                 "DeferredTracker", "DeferredLock"):
        assert hasattr(asynqueue, name)


def test_starImports():
    namespace = {}
    exec("from asynqueue.workers import *", namespace)
    exec("from asynqueue.base import *", namespace)
    exec("from asynqueue.tasks import *", namespace)
    exec("from asynqueue.iteration import *", namespace)
    assert "AsyncWorker" in namespace and "TaskQueue" in namespace
    assert "Deferator" in namespace and "TaskHandler" in namespace


@implementer(IWorker)
class OldStyleWorker:
    """A worker written the 0.9 way: pops the worker keywords, serialises
    with a DeferredLock, reports (status, result) through task.callback."""

    cQualified = ['old', 'local']

    def __init__(self, series=[]):
        self.iQualified = series
        self.dLock = util.DeferredLock()
        self.seenKeywords = []

    def setResignator(self, callableObject):
        self.dLock.addStopper(callableObject)

    @defer.inlineCallbacks
    def run(self, task):
        f, args, kw = task.callTuple
        consumer = kw.pop('consumer', None)
        raw = kw.pop('raw', None)
        vip = kw.pop('doNext', False) or task.priority <= -20
        self.seenKeywords.append(sorted(kw))
        yield self.dLock.acquire(vip)
        try:
            result = f(*args, **kw)
        except Exception as e:
            task.callback((b'e', str(e)))
        else:
            if not raw and iteration.isIterator(result):
                dr = iteration.Deferator(result)
                if consumer:
                    dr = iteration.IterationProducer(dr, consumer)
                task.callback((b'i', dr))
            else:
                task.callback((b'r', result))
        finally:
            self.dLock.release()

    def stop(self):
        return self.dLock.stop()

    def crash(self):
        return []


@implementer(IConsumer)
class Collector:
    def __init__(self):
        self.items = []
        self.producer = None

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def write(self, data):
        self.items.append(data)


class TestOldStyle(unittest.TestCase):

    def setUp(self):
        self.worker = OldStyleWorker()
        self.q = base.TaskQueue(self.worker, warn=True)

    def tearDown(self):
        return self.q.shutdown()

    @defer.inlineCallbacks
    def test_callAndKeywords(self):
        result = yield self.q.call(
            divmod, 7, 2, niceness=5, series=None, doNext=True)
        self.assertEqual(result, (3, 1))
        self.assertEqual(self.worker.seenKeywords, [[]])

    @defer.inlineCallbacks
    def test_errorTextWithWarn(self):
        text = yield self.q.call(divmod, 1, 0)
        self.assertIn("division", text)

    @defer.inlineCallbacks
    def test_deferatorLoop(self):
        dr = yield self.q.call(lambda: iter("abc"))
        got = []
        for d in dr:
            got.append((yield d))
        self.assertEqual(got, ["a", "b", "c"])

    @defer.inlineCallbacks
    def test_consumer(self):
        collector = Collector()
        result = yield self.q.call(lambda: iter(range(3)), consumer=collector)
        self.assertIs(result, collector)
        self.assertEqual(collector.items, [0, 1, 2])

    @defer.inlineCallbacks
    def test_seriesAndRoster(self):
        other = OldStyleWorker(series=['mine'])
        ID = yield self.q.attachWorker(other)
        self.assertEqual(self.q.th.roster('mine'), [other])
        self.assertEqual(self.q.th.roster('old'), [self.worker, other])
        self.assertEqual((yield self.q.call(abs, -3, series='mine')), 3)
        self.assertEqual((yield self.q.detachWorker(ID)), [])

    @defer.inlineCallbacks
    def test_innerQueueSubscribe(self):
        collector = Collector()
        self.q.q.subscribe(collector)
        yield self.q.call(abs, -1)
        self.assertEqual(collector.items, [1, 0])

    def test_boolOfRunningQueue(self):
        self.assertTrue(bool(self.q))

    def test_taskFactoryFormula(self):
        factory = tasks.TaskFactory()
        task = factory.new(abs, (1,), {}, 0)
        self.assertEqual(task.priority, 5.0)
        self.assertRaises(ValueError, factory.new, abs, (1,), {}, 30)

    def test_invariantError(self):
        worker = OldStyleWorker()
        worker.iQualified = None
        self.assertRaises(errors.InvariantError, self.q.attachWorker, worker)


class TestUtilities(unittest.TestCase):

    @defer.inlineCallbacks
    def test_deferredTracker(self):
        dt = util.DeferredTracker()
        d = defer.Deferred()
        dt.put(d)
        waiting = dt.deferToAll()
        self.assertFalse(waiting.called)
        d.callback(None)
        self.assertTrue((yield waiting))

    def test_o2p(self):
        self.assertEqual(util.o2p([]), b"")
        self.assertEqual(util.p2o(util.o2p({"a": 1})), {"a": 1})

    def test_info(self):
        text = asynqueue.Info().setCall(divmod, (1, 2)).aboutCall()
        self.assertEqual(text, "divmod(1, 2)")
