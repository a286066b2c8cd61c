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
import signal
import sys
import threading
import time
import weakref
from collections import deque
from itertools import count

from twisted.internet import defer, protocol, reactor
from twisted.internet.interfaces import IReadDescriptor, IWriteDescriptor
from twisted.python import log
from twisted.python.failure import Failure
from twisted.python.threadable import isInIOThread
from zope.interface import implementer

from . import child as wire
from . import errors
from ._speedups import framing
from .base import TaskQueue
from .child import ProcessUniverse, dumpsAnything
from .interfaces import IWorker
from .iteration import Deferator
from .shm import CallArena, ReplyRing
from .workers import iterationResult, popWorkerOptions

__all__ = ["ProcessQueue", "ProcessWorker", "ProcessUniverse", "ProcessBase"]

#: Calls each worker keeps in flight by default (see the benchmarks).
PIPELINING = 4
#: Consecutive children that may end before they start serving calls
#: before the worker gives up and resigns.
MAX_SILENT_DEATHS = 3
#: Main-side and child-side call times kept for ``stats()`` at most.
MAX_STATS = 100000
#: The smallest reply ring made for a child (bytes).
MIN_RING = 8 << 20


def _byValue(f):
    """True for a callable that plain pickle would send by a reference the
    child cannot resolve (``__main__``, lambdas, closures)."""
    target = getattr(f, "__func__", f)
    qualname = getattr(target, "__qualname__", "")
    return getattr(target, "__module__", None) == "__main__" or \
        "<locals>" in qualname or "<lambda>" in qualname


def _cloudDumps(obj, protocol=5, buffer_callback=None):
    import cloudpickle
    return cloudpickle.dumps(
        obj, protocol=protocol, buffer_callback=buffer_callback)


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


class _Call:
    """A task sent (or about to be sent) to a child."""

    __slots__ = ("task", "raw", "consumer", "regions", "sent", "abandoned",
                 "update")

    def __init__(self, task, raw, consumer, update=None):
        self.task = task
        self.raw = raw
        self.consumer = consumer
        self.regions = ()
        self.sent = 0.0
        self.abandoned = False
        #: The persistent update this call runs, as kept for new children.
        self.update = update


class _ChildProtocol(protocol.ProcessProtocol):
    """Tells the worker's child object when its process ends."""

    def __init__(self, child):
        self.child = child

    def connectionMade(self):
        self.transport.closeChildFD(0)

    def processEnded(self, reason):
        self.child.ended(reason)


@implementer(IReadDescriptor)
class _Channel:
    """
    The parent's ends of a child's two call pipes, watched by the reactor:
    what arrives goes to ``received``; writes go straight to the pipe and
    only what it cannot take at once waits for the reactor.
    """

    def __init__(self, readFD, writeFD, received):
        self.readFD = readFD
        self.writeFD = writeFD
        self.received = received
        self.outgoing = deque()
        self.closing = False
        self.writeEnd = _WriteEnd(self)
        for fd in (readFD, writeFD):
            os.set_blocking(fd, False)
            _enlargePipe(fd)
        reactor.addReader(self)

    def fileno(self):
        return self.readFD if self.readFD is not None else -1

    def logPrefix(self):
        return "asynqueue.process"

    def doRead(self):
        """Read what the child wrote (all of it, if the pipe is closing)."""
        try:
            data = os.read(self.readFD, wire.READ_SIZE)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:
            reactor.removeReader(self)
            return None
        self.received(data)
        return None

    def drain(self):
        """Read everything left in the pipe (the child has exited)."""
        while self.readFD is not None:
            try:
                data = os.read(self.readFD, wire.READ_SIZE)
            except OSError:
                return
            if not data:
                return
            self.received(data)

    def write(self, data):
        """Write now, as far as the pipe takes it; the rest later (nothing,
        once writing is being closed)."""
        if self.writeFD is None or self.closing:
            return
        if self.outgoing:
            self.outgoing.append(memoryview(data))
            return
        try:
            written = os.write(self.writeFD, data)
        except BlockingIOError:
            written = 0
        except OSError:
            return
        if written < len(data):
            self.outgoing.append(memoryview(data)[written:])
            reactor.addWriter(self.writeEnd)

    def flushOutgoing(self):
        """The pipe can take more: write what waits; True when done."""
        while self.outgoing:
            chunk = self.outgoing[0]
            try:
                written = os.write(self.writeFD, chunk)
            except BlockingIOError:
                return False
            except OSError:
                self.outgoing.clear()
                return True
            if written < len(chunk):
                self.outgoing[0] = chunk[written:]
                return False
            self.outgoing.popleft()
        return True

    def connectionLost(self, reason):
        pass

    def closeWriting(self):
        """No more calls: the child sees the end of its input once what
        waits to be written is."""
        self.closing = True
        if not self.outgoing:
            self._closeWriteFD()

    def _closeWriteFD(self):
        """Stop writing, dropping what waits, and close the write end."""
        if self.writeEnd in reactor.getWriters():
            reactor.removeWriter(self.writeEnd)
        self.outgoing.clear()
        if self.writeFD is not None:
            os.close(self.writeFD)
            self.writeFD = None

    def close(self):
        """Stop watching and close both ends."""
        if self in reactor.getReaders():
            reactor.removeReader(self)
        self._closeWriteFD()
        if self.readFD is not None:
            os.close(self.readFD)
            self.readFD = None


@implementer(IWriteDescriptor)
class _WriteEnd:
    """The write end of a channel, watched only while writes wait."""

    def __init__(self, channel):
        self.channel = channel

    def fileno(self):
        return self.channel.writeFD if self.channel.writeFD is not None \
            else -1

    def logPrefix(self):
        return "asynqueue.process"

    def doWrite(self):
        channel = self.channel
        if channel.writeFD is None or channel.flushOutgoing():
            reactor.removeWriter(self)
            if channel.closing:
                channel._closeWriteFD()

    def connectionLost(self, reason):
        pass


def _enlargePipe(fd):
    """Give a pipe a 1 MiB buffer where the system allows (Linux)."""
    import fcntl
    setSize = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setSize is not None:
        try:
            fcntl.fcntl(fd, setSize, 1 << 20)
        except OSError:
            pass


class ChildProcess:
    """
    One child process of a worker, as the parent sees it: its calls in
    flight, iterators and reply rings. Also what ``ProcessWorker.process``
    is: ``pid``, ``is_alive()`` and ``join(timeout=None)``.
    """

    def __init__(self, worker, args, env):
        self.worker = worker
        self.pending = {}
        self.fetches = {}
        self.rings = {}
        self.ringGeneration = 0
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
                _ChildProtocol(self), args[0], args, env=env,
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
        self.channel = _Channel(replies, calls, self.received)
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
        region = self.worker.arena.allocate(nbytes)
        segment = region[0]
        if segment not in self.announced:
            self.announced.add(segment)
            self._control.write(wire.SEGMENT, 0, (
                segment, self.worker.arena.segmentName(segment)))
        return region

    def send(self, requestID, call, f, args, kw):
        """Frame a call for the child; raise if it cannot be pickled."""
        dumps = _cloudDumps if _byValue(f) else dumpsAnything
        call.regions = self.writer.write(
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
        if _replyBatch.active:
            _replyBatch.children.add(self)
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
        with _replyBatch:
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
        """Private copies of a reply's buffers, freeing their ring space."""
        buffers = []
        for generation, offset, length in frame.buffers:
            ring = self.rings[generation]
            buffers.append(framing.copyOut(ring.view(offset, length)))
            ring.consume(offset, length)
        return buffers

    def growRing(self, wanted):
        """The child wants a bigger reply ring: make one and send it."""
        current = self.rings.get(self.ringGeneration)
        size = max(MIN_RING, 2 * wanted, 2 * (current.size if current else 0))
        self.ringGeneration += 1
        self.rings[self.ringGeneration] = ReplyRing.create(size)
        self._control.write(wire.RING, 0, (
            self.ringGeneration, self.rings[self.ringGeneration].name))
        self.flush()

    def ringAcknowledged(self, generation):
        """The child writes to ring ``generation`` now: free the older."""
        for old in [g for g in self.rings if g < generation]:
            self.rings.pop(old).close()

    def ended(self, reason):
        self.channel.drain()
        self.channel.close()
        self.exitReason = reason
        for ring in self.rings.values():
            ring.close()
        self.rings.clear()
        self._ended.set()
        self.worker.childEnded(self, reason)


class _ReplyBatch:
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


_replyBatch = _ReplyBatch()


class _RemoteIterator:
    """The parent's handle on an iterator held by a child: fetches its items
    in batches, one round trip per batch."""

    def __init__(self, worker, child, ID):
        self.worker = worker
        self.child = child
        self.ID = ID
        self.items = deque()
        self.more = True

    def getNext(self):
        """D→(value, isValid, moreLeft), as a Deferator's fetcher."""
        if self.items:
            value = self.items.popleft()
            return defer.succeed((value, True, bool(self.items) or self.more))
        if not self.more:
            return defer.succeed((None, False, False))
        return self.worker.fetch(self).addCallback(self._fetched)

    def _fetched(self, reply):
        items, more = reply
        self.items.extend(items)
        if not more:
            self._ended()
        return self.getNext()

    def drop(self, result=None):
        """Forget the iterator (in the child too, if it has items left);
        as a callback, pass ``result`` on."""
        if self.more:
            self.items.clear()
            self.child.drop(self.ID)
            self._ended()
        return result

    def _ended(self):
        """The child holds the iterator no more."""
        self.more = False
        self.worker.iteratorEnded(self.child, self.ID)


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
            self._sendTo(child, _Call(None, raw, None, update), f, args, kw)
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
        for call in pending.values():
            self._releaseRegions(call)
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
        raw, consumer, vip = popWorkerOptions(task, self.raw)
        f, args, kw = task.callTuple
        call = _Call(task, raw, consumer)
        if getattr(task, "updateMode", None) == "persistent":
            call.update = (raw, f, args, kw)
            self._updates.append(call.update)
        self._sendTo(self.child, call, f, args, kw)
        if self._inFlight() < self.pipelining:
            return defer.succeed(None)
        d = defer.Deferred()
        self._readyWaiters.append(d)
        return d

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
            reply = pickle.loads(frame.payload, buffers=child.replyBuffers(frame))
            if d is not None:
                d.callback(reply)
        elif kind == wire.READY:
            child.ready = True
        elif kind == wire.WANT_RING:
            child.growRing(pickle.loads(frame.payload))
        elif kind == wire.RING_ACK:
            child.ringAcknowledged(pickle.loads(frame.payload))
        else:
            raise framing.ProtocolError("unknown frame kind {}".format(kind))

    def _resultReceived(self, child, frame):
        call = child.pending.pop(frame.requestID, None)
        buffers = child.replyBuffers(frame)
        if call is None:
            return
        self._callsInFlight -= 1
        self._releaseRegions(call)
        try:
            status, result, seconds = pickle.loads(frame.payload, buffers=buffers)
        except Exception as error:
            status, result, seconds = b'e', "Can't load the result of {!r}: {}".format(
                call.task, error), None
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
        remote = _RemoteIterator(self, child, ID)
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

    def _releaseRegions(self, call):
        regions, call.regions = call.regions, ()
        for segment, offset, length in regions:
            self.arena.release(segment, offset)

    def _slotFreed(self):
        """A call finished: let a waiting request through."""
        if self._readyWaiters and self._inFlight() < self.pipelining:
            self._readyWaiters.popleft().callback(None)
        if self._stopping:
            self._checkStopped()

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
            while self._readyWaiters:
                self._readyWaiters.popleft().callback(None)
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
        if not _liveQueues and "asynqueue.shm" in sys.modules:
            from .shm import SharedArray
            SharedArray.closeAll()


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
