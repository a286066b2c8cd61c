"""
Wire servers in processes of their own: ``ServerManager.spawn`` of
``python -m asynqueue.wire``, readiness learned from the banner, the
parent's environment and key passed on, failures reported with the
server's own words, and every server ended afterwards.
"""
import os

from twisted.internet import defer
from twisted.trial import unittest

from asynqueue import errors, misc, util, wire
from asynqueue.base import TaskQueue

from test_wire import waitUntil

KEY = "a key shared by parent and server"


class EnvironmentUniverse(misc.TestUniverse):
    """Tells a client about the server's process."""

    def environment(self, name):
        return os.environ.get(name)

    def pid(self):
        return os.getpid()


FQN = "test_wire_spawn.EnvironmentUniverse"


class TestServerManager(unittest.TestCase):

    timeout = 30

    def setUp(self):
        self.managers = []
        self.queues = []

    @defer.inlineCallbacks
    def tearDown(self):
        for q in self.queues:
            yield q.shutdown()
        for manager in self.managers:
            yield manager.shutdown()
            self.assertEqual(manager.processInfo, {})
            self.assertFalse(os.path.exists(getattr(
                manager, "tempDir", None) or "/nonexistent"))

    def makeManager(self, fqn=FQN, **kw):
        manager = wire.ServerManager(fqn, **kw)
        self.managers.append(manager)
        return manager

    def makeQueue(self, description, **kw):
        q = TaskQueue(wire.WireWorker(misc.TestUniverse(), description, **kw),
                      returnFailure=True)
        self.queues.append(q)
        return q

    @defer.inlineCallbacks
    def test_spawnStdio(self):
        """The process's banner says it listens; it has our environment."""
        self.patch(os, "environ", dict(os.environ, AQ_WIRE_TEST="passed on"))
        manager = self.makeManager()
        description = manager.newSocket()
        pp = yield manager.spawn(description, stdio=True)
        self.assertIsInstance(pp, util.ProcessProtocol)
        self.assertIn(b"AsynQueue WireServer listening at " +
                      description.encode(), (yield pp.d))
        q = self.makeQueue(description)
        self.assertEqual((yield q.call("add", 1, 2)), 3)
        self.assertEqual((yield q.call("environment", "AQ_WIRE_TEST")),
                         "passed on")
        self.assertEqual((yield q.call("pid")), pp.pid)

    @defer.inlineCallbacks
    def test_spawnPidWithKey(self):
        manager = self.makeManager(key=KEY)
        first, second = manager.newSocket(), manager.newSocket()
        self.assertNotEqual(first, second)
        pid = yield manager.spawn(first)
        self.assertIsInstance(pid, int)
        q = self.makeQueue(first, key=KEY)
        self.assertEqual((yield q.call("pid")), pid)
        worker = wire.WireWorker(misc.TestUniverse(), first)
        yield self.assertFailure(
            worker.whenConnected(), wire.AuthenticationError)
        yield worker.stop()
        yield manager.done(pid)
        self.assertNotIn(pid, manager.processInfo)

    @defer.inlineCallbacks
    def test_serverKilledMidCall(self):
        """The server process dies during a call: the call fails over to
        a new server (0.9's test_afterDisconnect)."""
        manager = self.makeManager()
        description = manager.newSocket()
        pid = yield manager.spawn(description)
        q = self.makeQueue(description)
        d = q.call("blockingTask", 21, 0.3, thread=True)
        yield util.killProcess(pid)
        yield waitUntil(lambda: len(q) == 0, "the worker to resign")
        description = manager.newSocket()
        yield manager.spawn(description)
        yield q.attachWorker(wire.WireWorker(misc.TestUniverse(), description))
        self.assertEqual((yield d), 42)

    @defer.inlineCallbacks
    def test_badUniverseReported(self):
        manager = self.makeManager("asynqueue.misc.NoSuchUniverse")
        error = yield self.assertFailure(
            manager.spawn(manager.newSocket()), wire.WireError)
        self.assertIn("NoSuchUniverse", str(error))

    @defer.inlineCallbacks
    def test_exposedWithoutKeyReported(self):
        manager = self.makeManager()
        error = yield self.assertFailure(
            manager.spawn("tcp:0"), wire.WireError)
        self.assertIn("without a key", str(error))

    def test_unknownCallFails(self):
        """A queue call to a method the universe lacks is an error."""
        manager = self.makeManager()

        @defer.inlineCallbacks
        def run():
            description = manager.newSocket()
            yield manager.spawn(description)
            q = self.makeQueue(description)
            yield self.assertFailure(q.call("nonesuch"), errors.WorkerError)
        return run()
