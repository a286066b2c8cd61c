"""
Helpers shared by the tests: workers whose behaviour a test scripts, and
small consumers. Nothing here is part of the library.
"""
import logging
import sys
from contextlib import contextmanager
from io import StringIO

from twisted.internet import defer, reactor, task
from twisted.internet.interfaces import IConsumer
from zope.interface import implementer

from asynqueue.interfaces import IWorker


@implementer(IWorker)
class ScriptedWorker:
    """
    A worker that reports, for each task, the next ``(status, result)``
    from ``script`` (or ``(b'r', f(*args, **kw))`` once the script is
    used up). With ``hold=True`` every task waits until ``release()``.
    """

    cQualified = ["scripted"]

    def __init__(self, script=(), series=(), hold=False):
        self.iQualified = list(series)
        self.script = list(script)
        self.hold = hold
        self.ran = []
        self.held = []
        self.crashed = False
        self.stopped = False
        self.cancelled = []
        self.resignator = None

    def setResignator(self, callableObject):
        self.resignator = callableObject

    def run(self, task):
        self.ran.append(task)
        if self.hold:
            d = defer.Deferred()
            self.held.append((task, d))
            return d
        self._finish(task)
        return defer.succeed(None)

    def _finish(self, task):
        f, args, kw = task.callTuple
        if self.script:
            task.callback(self.script.pop(0))
        else:
            task.callback((b'r', f(*args, **kw)))

    def release(self, n=None):
        """Finish the first ``n`` held tasks (all by default)."""
        count = len(self.held) if n is None else n
        for _ in range(count):
            task, d = self.held.pop(0)
            self._finish(task)
            d.callback(None)

    def cancelTask(self, task):
        """Abandon ``task`` (as a process worker kills its child): the
        worker is free again and the task never reports."""
        self.cancelled.append(task)
        for entry in list(self.held):
            if entry[0] is task:
                self.held.remove(entry)
                entry[1].callback(None)

    def stop(self):
        self.stopped = True
        return defer.succeed(None)

    def crash(self):
        self.crashed = True
        return [task for task, d in self.held]


@implementer(IConsumer)
class RecordingConsumer:
    """Records what is written to it, and its producer's life."""

    def __init__(self):
        self.written = []
        self.producer = None
        self.unregistered = 0

    def registerProducer(self, producer, streaming):
        if self.producer is not None:
            raise RuntimeError("already have a producer")
        self.producer = producer
        self.streaming = streaming

    def unregisterProducer(self):
        self.producer = None
        self.unregistered += 1

    def write(self, data):
        self.written.append(data)


@contextmanager
def capturedLog(name="asynqueue"):
    """The list of records logged on ``name`` while the block runs."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


@contextmanager
def capturedStream(name):
    """A StringIO standing in for ``sys.<name>`` while the block runs."""
    original = getattr(sys, name)
    setattr(sys, name, StringIO())
    try:
        yield getattr(sys, name)
    finally:
        setattr(sys, name, original)


def capturedStderr():
    """A StringIO standing in for sys.stderr while the block runs."""
    return capturedStream("stderr")


def capturedStdout():
    """A StringIO standing in for sys.stdout while the block runs."""
    return capturedStream("stdout")


def children(pid):
    """PIDs of the live children of ``pid``."""
    try:
        with open("/proc/{}/task/{}/children".format(pid, pid)) as fh:
            return [int(x) for x in fh.read().split()]
    except FileNotFoundError:
        return []


def gone(pid):
    """True once ``pid`` has exited (a zombie counts)."""
    try:
        with open("/proc/{}/stat".format(pid)) as fh:
            return fh.read().split()[2] == "Z"
    except FileNotFoundError:
        return True


@defer.inlineCallbacks
def collect(dr):
    """D→every item of a Deferator, waiting for each."""
    items = []
    for d in dr:
        items.append((yield d))
    return items


@defer.inlineCallbacks
def waitUntil(condition, what, deadline=10.0):
    """Fire once ``condition()`` is true; fail after ``deadline`` s."""
    started = reactor.seconds()
    while not condition():
        if reactor.seconds() - started > deadline:
            raise AssertionError("Waited {} s for {}".format(deadline, what))
        yield task.deferLater(reactor, 0.005, lambda: None)
