"""
The child side of a process worker: ``ProcessUniverse`` serves the calls a
ProcessWorker sends over its private pipes, with no reactor, in a tight
blocking loop (``python -m asynqueue.child``).

It imports neither Twisted nor numpy, so a child starts fast; what a call
needs gets imported when its pickle is loaded.
"""
import os
import pickle
import select
import signal
import sys
import time
from itertools import count

from ._speedups import framing, numpyAllocator
from .arena import REGION_HEADER, ArenaReader, ReplyArenaWriter, regionSize

__all__ = ["ProcessUniverse", "cloudDumps", "dumpsAnything", "errorText"]

# Frame kinds, parent to child.
CALL = 1            # (f, args, kw, raw) -> RESULT
NEXT = 2            # (iteratorID, batchSize) -> ITEMS
DROP = 3            # iteratorID; no reply
SEGMENT = 4         # (segmentID, name) of a call arena segment
REPLY_ARENA = 5     # (generation, name) of a new reply arena -> ARENA_ACK
# Frame kinds, child to parent.
RESULT = 10         # (status, result, childSeconds)
ITEMS = 11          # (items, moreLeft)
WANT_ARENA = 12     # minimum size of a reply arena that would have helped
ARENA_ACK = 13      # generation: the child writes only to that arena now
READY = 14          # no payload: the child has started serving

#: File descriptors of the call channel in the child.
FD_CALLS, FD_REPLIES = 3, 4
#: How much the child reads from its pipe at once.
READ_SIZE = 1 << 16
#: The items a NEXT sends at most, unless the parent asks for fewer.
DEFAULT_BATCH = 256
#: How long the child polls for the next call before it sleeps (seconds).
SPIN_SECONDS = 0.0003
#: numpy arrays of this many bytes or more (and of the shared-memory
#: threshold) are born in the reply arena, once a call has loaded numpy.
BORN_IN_ARENA = 1 << 20


def cloudDumps(obj, protocol=5, buffer_callback=None):
    """Pickle ``obj`` by value with cloudpickle (lambdas, closures,
    functions of ``__main__``)."""
    import cloudpickle
    return cloudpickle.dumps(
        obj, protocol=protocol, buffer_callback=buffer_callback)


def dumpsAnything(obj, protocol=5, buffer_callback=None):
    """
    Pickle ``obj`` with the standard pickler, or with cloudpickle when that
    fails.
    """
    try:
        return pickle.dumps(
            obj, protocol=protocol, buffer_callback=buffer_callback)
    except Exception:
        return cloudDumps(obj, protocol, buffer_callback)


def errorText(doing, exception=None):
    """The text of the exception being handled (or given), in the format
    of ``Info.aboutException``."""
    import traceback
    if exception is None:
        exception = sys.exc_info()[1]
    lines = [
        "Exception '{}'".format(exception),
        " doing call '{}':".format(doing),
    ]
    body = "".join(traceback.format_exception(
        type(exception), exception, exception.__traceback__))
    lines.append("-" * min(79, max(len(x) for x in lines) + 1))
    lines.append(body)
    return "\n".join(lines)


def callText(f, args, kw):
    """``f(a, b, k=v)``, for error messages."""
    name = getattr(f, "__qualname__", None) or repr(f)
    parts = [repr(x) for x in args]
    parts.extend("{}={!r}".format(k, v) for k, v in kw.items())
    return "{}({})".format(name, ", ".join(parts))


def isIterator(x):
    """Iteration's rule, without importing Twisted: not a builtin
    container, and has both ``__iter__`` and ``__next__``."""
    if isinstance(x, (str, bytes, list, tuple, bytearray, memoryview, dict,
                      set, frozenset)):
        return False
    return callable(getattr(x, "__next__", None)) and \
        callable(getattr(x, "__iter__", None))


class _Lookahead:
    """An iterator held for the parent, one item ahead so that every
    batch can say whether more follow."""

    __slots__ = ("iterator", "nextItem", "done")

    def __init__(self, iterator):
        self.iterator = iterator
        self.done = False
        self._advance()

    def _advance(self):
        try:
            self.nextItem = next(self.iterator)
        except StopIteration:
            self.done = True
            self.nextItem = None

    def batch(self, size):
        """Up to ``size`` items, and whether more are left. An error in the
        iterator ends it after the items fetched so far."""
        items = []
        while not self.done and len(items) < size:
            items.append(self.nextItem)
            try:
                self._advance()
            except Exception:
                self.done = True
                sys.stderr.write(errorText("next() of an iterator") + "\n")
        return items, not self.done


class ProcessUniverse:
    """
    The state of a worker's child process: the calls it runs, the
    iterators it holds for the parent, and its shared memory.

    ``raw`` returns iterators as they are (they must then pickle);
    ``callStats`` times each call. ``useReactor`` is accepted for 0.9
    compatibility and must be False: the child runs no reactor.
    """

    #: The universe serving in this process, once one does.
    serving = None

    def __init__(self, raw=False, callStats=False, useReactor=False,
                 shmThreshold=framing.DEFAULT_THRESHOLD):
        if useReactor:
            raise ValueError("A process worker's child runs no reactor")
        self.raw = raw
        self.callStats = callStats
        self.iterators = {}
        self._iteratorIDs = count(1)
        self.segments = {}
        self.arena = ArenaReader()
        self.replyArena = None
        self.replyGeneration = 0
        #: Earlier reply arenas that numpy arrays still live in.
        self.retiredArenas = []
        #: Reply buffers lent in place while the frame now handled runs:
        #: (offset, reserve offset, reserve view); see ``_settle``.
        self._adopted = []
        #: The numpy memory handler once installed; False if it cannot be.
        self.allocator = None
        self._bornThreshold = max(BORN_IN_ARENA, shmThreshold)
        self._wanted = 0
        self.reader = framing.FrameReader()
        self.writer = framing.FrameWriter(
            shmThreshold, self._allocate, self._release, self._adopt)
        self._handlers = {
            CALL: self.runCall, NEXT: self.sendItems, DROP: self.dropIterator,
            SEGMENT: self.addSegment, REPLY_ARENA: self.useReplyArena,
        }

    # --- Shared memory ---------------------------------------------------

    def _allocate(self, nbytes):
        """Room for a reply buffer in the reply arena, as ``(generation,
        offset, view)``, or None (noting how much a bigger arena would have
        needed)."""
        arena = self.replyArena
        region = arena.allocate(nbytes) if arena is not None else None
        if region is None:
            self._wanted += regionSize(nbytes)
            return None
        return self.replyGeneration, region[1], region[2]

    def _release(self, segment, offset):
        self.replyArena.release(0, offset)

    def _adopt(self, buffer):
        """A reply buffer that is an array born in the reply arena is lent
        to the parent as it lies, with a reserve region of its size in
        case the call keeps the array (see ``_settle``): its
        ``(generation, offset)``, or None."""
        arena = self.replyArena
        offset = arena.ownedAt(buffer) if arena is not None else None
        if offset is None:
            return None
        reserve = arena.allocate(memoryview(buffer).nbytes)
        if reserve is None:
            return None
        arena.lend(offset)
        self._adopted.append((offset,) + reserve[1:])
        return self.replyGeneration, offset

    def _settle(self):
        """
        A frame was handled, and no other code of the child has run yet: a
        reply array that the call kept (the child may change it later) is
        copied now to its reserve, and the reply points there instead, so
        the parent gets the array as it was sent. Unused reserves are
        freed.
        """
        adopted, self._adopted = self._adopted, []
        arena, generation = self.replyArena, self.replyGeneration
        for offset, reserveOffset, reserve in adopted:
            if arena.ownerHolds(offset) and self.writer.redirect(
                    generation, offset, generation, reserveOffset):
                arena.copyInto(offset, reserve)
                arena.release(0, offset)
            else:
                arena.release(0, reserveOffset)

    def _bear(self, nbytes):
        """Where numpy puts a new array of ``nbytes`` bytes: the address of
        a reply arena region, or 0 for its own memory."""
        arena = self.replyArena
        return arena.allocateOwned(nbytes) if arena is not None else 0

    def _hostArrays(self):
        """Once numpy is loaded, have large arrays born in the reply arena
        (compiled core only), so that results go back with no copy."""
        self.allocator = numpyAllocator() or False
        if self.allocator:
            self.allocator.install(
                self._bear, self._bornThreshold, REGION_HEADER)
            if self.replyArena is not None:
                self.replyArena.hostArrays(self.allocator)

    def addSegment(self, requestID, payload):
        segmentID, name = payload
        self.segments[segmentID] = name

    def useReplyArena(self, requestID, payload):
        """Write replies to a new reply arena from now on."""
        generation, name = payload
        if self.replyArena is not None:
            self.retiredArenas.append(self.replyArena)
        self.retiredArenas = [
            arena for arena in self.retiredArenas if not arena.close()]
        self.replyArena = ReplyArenaWriter.attach(name)
        if self.allocator:
            self.replyArena.hostArrays(self.allocator)
        self.replyGeneration = generation
        self.writer.writeBytes(ARENA_ACK, requestID, pickle.dumps(generation))

    def _buffers(self, frame):
        """A frame's shared-memory buffers, borrowed in place."""
        return [self.arena.borrow(self.segments[segment], offset, length)
                for segment, offset, length in frame.buffers]

    # --- Requests ----------------------------------------------------------

    def runCall(self, requestID, payload):
        """Run a call and reply with ``(status, result, seconds)``."""
        try:
            f, args, kw, raw = payload
        except Exception:
            return self.reply(requestID, b'e', errorText("loading a call"))
        raw = self.raw if raw is None else raw
        if self.allocator is None and "numpy" in sys.modules:
            self._hostArrays()
        start = time.perf_counter()
        try:
            result = f(*args, **kw)
        except Exception:
            status, result = b'e', errorText(callText(f, args, kw))
        else:
            status = b'r'
            if not raw and isIterator(result):
                status, result = b'i', self.keepIterator(result)
        seconds = time.perf_counter() - start if self.callStats else None
        del f, args, kw, payload
        self.reply(requestID, status, result, seconds)

    def keepIterator(self, iterator):
        """Hold an iterator for the parent; its ID, or None if empty."""
        try:
            held = _Lookahead(iterator)
        except Exception:
            sys.stderr.write(errorText("the first next() of an iterator"))
            return None
        if held.done:
            return None
        ID = next(self._iteratorIDs)
        self.iterators[ID] = held
        return ID

    def sendItems(self, requestID, payload):
        """Reply with the next batch of an iterator's items; items that
        cannot be pickled end the iteration, as an error in it does."""
        ID, size = payload
        held = self.iterators.get(ID)
        if held is None:
            items, more = [], False
        else:
            items, more = held.batch(size or DEFAULT_BATCH)
        try:
            self.send(ITEMS, requestID, (items, more))
        except Exception:
            sys.stderr.write(errorText("pickling items of an iterator") + "\n")
            more = False
            self.send(ITEMS, requestID, ([], more))
        if not more:
            self.iterators.pop(ID, None)

    def dropIterator(self, requestID, payload):
        self.iterators.pop(payload, None)

    def reply(self, requestID, status, result, seconds=None):
        """Send a call's outcome; one that cannot be pickled becomes an
        error reply, so the worker stays healthy."""
        try:
            self.send(RESULT, requestID, (status, result, seconds))
        except Exception:
            text = errorText("pickling the result of a call")
            self.send(RESULT, requestID, (b'e', text, seconds))

    def send(self, kind, requestID, obj):
        """Frame ``obj`` for the parent (nothing is framed if it cannot be
        pickled: the exception propagates)."""
        self._wanted = 0
        self.writer.write(kind, requestID, obj, dumps=dumpsAnything)
        if self._wanted:
            self.writer.writeBytes(
                WANT_ARENA, 0, pickle.dumps(self._wanted))

    # --- The loop ------------------------------------------------------

    def handle(self, frame):
        """Load one frame from the parent and act on it."""
        handler = self._handlers.get(frame.kind)
        if handler is None:
            raise framing.ProtocolError(
                "Unknown frame kind {} from the parent".format(frame.kind))
        try:
            payload = pickle.loads(frame.payload, buffers=self._buffers(frame))
        except Exception:
            if frame.kind == CALL:
                return self.reply(
                    frame.requestID, b'e', errorText("loading a call"))
            raise
        handler(frame.requestID, payload)

    def serve(self, fdIn=FD_CALLS, fdOut=FD_REPLIES):
        """Serve frames until the parent closes the pipe (or dies)."""
        reader, writer = self.reader, self.writer
        ProcessUniverse.serving = self
        os.set_blocking(fdIn, False)
        writer.writeBytes(READY, 0, b"")
        _writeAll(fdOut, writer.take())
        while True:
            data = _read(fdIn)
            if not data:
                break
            reader.feed(data)
            while True:
                frame = reader.next()
                if frame is None:
                    break
                if frame.kind == CALL and len(writer):
                    # A call may take long: what is ready goes first.
                    _writeAll(fdOut, writer.take())
                self.handle(frame)
                if self._adopted:
                    self._settle()
            if len(writer):
                _writeAll(fdOut, writer.take())
        self.close()

    def close(self):
        """Let go of iterators and shared memory; arenas that numpy arrays
        still live in stay mapped until the process exits."""
        self.iterators.clear()
        self.arena.close()
        for arena in self.retiredArenas + [self.replyArena]:
            if arena is not None:
                arena.close()

    # --- 0.9 API ---------------------------------------------------------

    def loop(self, connection=None):
        """0.9's entry point: serve the standard call channel."""
        self.serve()


def _read(fd):
    """
    The next bytes from the parent, waiting as long as it takes. The wait
    starts with a short spin that yields the CPU at each turn: the next
    call of a busy parent mostly comes within microseconds, while waking
    from a blocking read costs tens of them (measured on 2 cores: one call
    at a time, 52 µs a round trip with the spin, 185 µs without; bursts of
    calls no slower, since a spinning child yields to the parent).
    """
    deadline = time.perf_counter() + SPIN_SECONDS
    while True:
        try:
            return os.read(fd, READ_SIZE)
        except BlockingIOError:
            if time.perf_counter() >= deadline:
                break
            os.sched_yield()
    select.select([fd], [], [])
    return os.read(fd, READ_SIZE)


def _writeAll(fd, data):
    """Write all of ``data`` to a blocking pipe."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _dieWithParent():
    """Ask Linux to kill this process when its parent dies (the closed
    pipe ends it too, but only between calls)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except Exception:
        pass


def main(argv):
    """``python -m asynqueue.child RAW CALLSTATS THRESHOLD PARENTPID``."""
    raw, callStats, threshold, parentPID = argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _dieWithParent()
    if os.getppid() != int(parentPID):
        return 1
    universe = ProcessUniverse(
        raw == "1", callStats == "1", shmThreshold=int(threshold))
    universe.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
