"""
A process worker's children as the parent sees them: ``ChildProcess``
spawns one, frames calls for it and hands its replies to the worker;
``RemoteIterator`` fetches the items of an iterator a child holds.
"""
import os
import signal
import sys
import threading
import time

from twisted.internet import defer, protocol, reactor
from twisted.python import log
from twisted.python.threadable import isInIOThread

from . import child as wire
from ._speedups import framing
from .child import cloudDumps, dumpsAnything
from .iteration import BatchFetcher
from .pipes import Channel
from .arena import ReplyArena

__all__ = ["ChildProcess", "RemoteIterator", "Call", "childEnvironment",
           "exitText", "replyBatch"]

#: The smallest reply arena made for a child (bytes).
MIN_REPLY_ARENA = 8 << 20


def byValue(f):
    """True for a callable that plain pickle would send by a reference the
    child cannot resolve (``__main__``, lambdas, closures)."""
    target = getattr(f, "__func__", f)
    qualname = getattr(target, "__qualname__", "")
    return getattr(target, "__module__", None) == "__main__" or \
        "<locals>" in qualname or "<lambda>" in qualname


def childEnvironment(env=None):
    """The child's environment: ``env`` (default: ours), with our
    ``sys.path`` as its PYTHONPATH so that what we import, it imports."""
    env = dict(os.environ if env is None else env)
    paths = [path or os.getcwd() for path in sys.path]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def exitText(reason):
    """How a child ended, in words."""
    value = getattr(reason, "value", None)
    number = getattr(value, "signal", None)
    if number:
        try:
            return "killed by signal {} ({})".format(
                number, signal.Signals(number).name)
        except ValueError:
            return "killed by signal {}".format(number)
    return "exit code {}".format(getattr(value, "exitCode", "unknown"))


class Call:
    """A task sent (or about to be sent) to a child."""

    __slots__ = ("task", "raw", "consumer", "sent", "abandoned", "update")

    def __init__(self, task, raw, consumer, update=None):
        self.task = task
        self.raw = raw
        self.consumer = consumer
        self.sent = 0.0
        self.abandoned = False
        #: The persistent update this call runs, as kept for new children.
        self.update = update


class ChildProtocol(protocol.ProcessProtocol):
    """Tells the worker's child object when its process ends."""

    def __init__(self, child):
        self.child = child

    def connectionMade(self):
        self.transport.closeChildFD(0)

    def processEnded(self, reason):
        self.child.ended(reason)


class ChildProcess:
    """
    One child process of a worker, as the parent sees it: its calls in
    flight, iterators and reply arenas. Also what ``ProcessWorker.process``
    is: ``pid``, ``is_alive()`` and ``join(timeout=None)``.
    """

    def __init__(self, worker, args, env):
        self.worker = worker
        self.pending = {}
        self.fetches = {}
        self.replyArenas = {}
        self.replyGeneration = 0
        self.announced = set()
        self.calls = 0
        self.ready = False
        self.corrupt = False
        self.iterators = set()
        self.exitReason = None
        self.abandoning = False
        self._ended = threading.Event()
        self.reader = framing.FrameReader()
        self.writer = framing.FrameWriter(
            worker.shmThreshold, self._allocate, worker.arena.release)
        self._control = framing.FrameWriter()
        childCalls, calls = os.pipe()
        replies, childReplies = os.pipe()
        try:
            self.transport = reactor.spawnProcess(
                ChildProtocol(self), args[0], args, env=env,
                path=os.getcwd(), childFDs={
                    0: "w", 1: 1, 2: 2, wire.FD_CALLS: childCalls,
                    wire.FD_REPLIES: childReplies})
        except BaseException:
            os.close(calls)
            os.close(replies)
            raise
        finally:
            os.close(childCalls)
            os.close(childReplies)
        self.channel = Channel(replies, calls, self.received)
        self.pid = self.transport.pid

    def __repr__(self):
        return "<worker process {}>".format(self.pid)

    # --- The 0.9 process API -------------------------------------------

    def is_alive(self):
        return not self._ended.is_set()

    def join(self, timeout=None):
        """Wait for the process to end (never blocks the reactor thread,
        where the end is only seen once control returns to it)."""
        if isInIOThread():
            return
        self._ended.wait(timeout)

    # --- Sending -------------------------------------------------------

    def _allocate(self, nbytes):
        """A call arena region, announcing new segments to the child."""
        region = self.worker.arena.allocate(nbytes, self)
        segment = region[0]
        if segment not in self.announced:
            self.announced.add(segment)
            self._control.write(wire.SEGMENT, 0, (
                segment, self.worker.arena.segmentName(segment)))
        return region

    def send(self, requestID, call, f, args, kw):
        """Frame a call for the child; raise if it cannot be pickled."""
        dumps = cloudDumps if byValue(f) else dumpsAnything
        self.writer.write(
            wire.CALL, requestID, (f, args, kw, call.raw), dumps=dumps)
        call.sent = time.perf_counter()
        self.pending[requestID] = call
        self.calls += 1
        self.flushSoon()

    def fetch(self, requestID, iteratorID, size):
        """Ask for a batch of an iterator's items: D→(items, moreLeft)."""
        if self.exitReason is not None:
            return defer.fail(self.lostIterator(self.exitReason))
        d = defer.Deferred()
        self.fetches[requestID] = d
        self.writer.write(wire.NEXT, requestID, (iteratorID, size))
        self.flush()
        return d

    def lostIterator(self, reason):
        """The error of fetching from an iterator I held when I ended."""
        return defer.CancelledError(
            "{!r} ended ({}) while iterating".format(self, exitText(reason)))

    def drop(self, iteratorID):
        if self.is_alive():
            self.writer.write(wire.DROP, 0, iteratorID)
            self.flush()

    def flushSoon(self):
        """Write what is framed now; or, while replies are being handled,
        once they all are, so that the calls they set off share a write."""
        if replyBatch.active:
            replyBatch.children.add(self)
        else:
            self.flush()

    def flush(self):
        """Write what is framed to the child, announcements first."""
        if self.exitReason is not None:
            self.writer.take()
            return
        data = self.writer.take()
        if len(self._control):
            data = self._control.take() + data
        self.channel.write(data)

    def finish(self):
        """No more calls: the child exits once it has replied to all."""
        self.flush()
        self.channel.closeWriting()

    def kill(self):
        if self.is_alive():
            try:
                self.transport.signalProcess("KILL")
            except Exception:
                pass

    # --- Receiving -----------------------------------------------------

    def received(self, data):
        """Bytes from the child: handle each complete frame. A frame that
        breaks the protocol kills the child; what follows it is ignored."""
        if self.corrupt:
            return
        with replyBatch:
            try:
                self._handleFrames(data)
            except Exception as error:
                self.corrupt = True
                log.msg("Killing {!r}, which broke the protocol: {!r}".format(
                    self, error))
                self.kill()

    def _handleFrames(self, data):
        reader = self.reader
        reader.feed(data)
        frame = reader.next()
        while frame is not None:
            self.worker.frameReceived(self, frame)
            frame = reader.next()

    def replyBuffers(self, frame):
        """A reply's buffers, borrowed in place from the reply arena."""
        return [self.replyArenas[generation].borrow(offset, length)
                for generation, offset, length in frame.buffers]

    def growReplyArena(self, wanted):
        """The child wants a bigger reply arena: make one and send it."""
        current = self.replyArenas.get(self.replyGeneration)
        size = max(MIN_REPLY_ARENA, 2 * wanted,
                   2 * (current.size if current else 0))
        self.replyGeneration += 1
        arena = self.replyArenas[self.replyGeneration] = \
            ReplyArena.create(size)
        self._control.write(wire.REPLY_ARENA, 0, (
            self.replyGeneration, arena.name))
        self.flush()

    def replyArenaAcknowledged(self, generation):
        """The child writes to reply arena ``generation`` now: free the
        older ones (once no reply borrowed from them is in use)."""
        for old in [g for g in self.replyArenas if g < generation]:
            self.replyArenas.pop(old).close()

    def ended(self, reason):
        self.channel.drain()
        self.channel.close()
        self.exitReason = reason
        for arena in self.replyArenas.values():
            arena.close()
        self.replyArenas.clear()
        self._ended.set()
        self.worker.childEnded(self, reason)


class ReplyBatch:
    """While replies are handled, the calls they set off are framed but
    written only at the end, one write per child."""

    def __init__(self):
        self.active = 0
        self.children = set()

    def __enter__(self):
        self.active += 1

    def __exit__(self, *exc):
        self.active -= 1
        if not self.active:
            children, self.children = self.children, set()
            for child in children:
                child.flush()


replyBatch = ReplyBatch()


class RemoteIterator(BatchFetcher):
    """The parent's handle on an iterator held by a child: fetches its items
    in batches, one round trip per batch."""

    def __init__(self, worker, child, ID):
        BatchFetcher.__init__(self)
        self.worker = worker
        self.child = child
        self.ID = ID

    def fetchBatch(self):
        return self.worker.fetch(self)

    def drop(self, result=None):
        """Forget the iterator (in the child too, if it has items left);
        as a callback, pass ``result`` on."""
        if self.more:
            self.items.clear()
            self.child.drop(self.ID)
            self.ended()
        return result

    def ended(self):
        """The child holds the iterator no more."""
        self.more = False
        self.worker.iteratorEnded(self.child, self.ID)
