"""
The client end of asynqueue's remote workers: ``WireWorker`` sends a
TaskQueue's calls to a WireServer over an authenticated AMP connection
and ``RemoteIterator`` fetches the iterators the server holds for it.
Import these from ``asynqueue.wire``.
"""
import hmac
import os
import weakref
from itertools import count

from twisted.internet import defer, endpoints, error, reactor
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from .interfaces import IWorker
from .iteration import BatchFetcher, Deferator, Prefetcherator
from .slots import Call, SlotsWorker, relayTo
from .util import o2p, p2o
from .wireproto import (
    KEY_ENV, NONCE_BYTES, PROTOCOL_VERSION, Authenticate,
    AuthenticationError, CancelTask, DropIterator, GetNext, Hello,
    NextBatch, RunTask, WireError, WireProtocol, digest, dumpSections, log,
    packObject, resolveKey, unpackObject)
from .wireserver import WireWorkerUniverse
from .workers import iterationResult

__all__ = ["WireWorker", "RemoteIterator", "WireClientProtocol"]

#: Items of a remote iterator fetched per round trip, by default.
ITERATION_BATCH = 256


class WireClientProtocol(WireProtocol):
    """A WireWorker's connection: tells the worker when it is lost."""

    def __init__(self, worker):
        WireProtocol.__init__(self)
        self.worker = worker
        self.legacy = False
        #: The server's protocol version (0 for a 0.9 server).
        self.version = 0

    def locateResponder(self, name):
        """A server may call nothing on its clients."""
        return None

    def connectionLost(self, reason):
        self.worker._connectionLosing()
        WireProtocol.connectionLost(self, reason)
        self.worker._connectionLost(reason)

    @defer.inlineCallbacks
    def handshake(self, key):
        """Say Hello and, with a key, prove it and check the server's
        proof. A server that does not know Hello is a 0.9 one."""
        nonce = os.urandom(NONCE_BYTES)
        try:
            reply = yield self.callRemote(
                Hello, version=PROTOCOL_VERSION, nonce=nonce)
        except amp.UnhandledCommand:
            if key is not None:
                raise AuthenticationError(
                    "The server does not authenticate (AsynQueue 0.9?), "
                    "but this worker has a key")
            self.legacy = True
            return
        self.version = reply['version']
        if reply['keyed'] and key is None:
            raise AuthenticationError(
                "The server requires a key: give WireWorker key=... or "
                "keyFile=..., or set {}".format(KEY_ENV))
        if key is None:
            return
        if not reply['keyed']:
            raise AuthenticationError(
                "The server has no key, so it cannot prove who it is")
        serverNonce = reply['nonce']
        try:
            answer = yield self.callRemote(
                Authenticate,
                digest=digest(key, b"client", serverNonce, nonce))
        except (amp.RemoteAmpError, error.ConnectionDone,
                error.ConnectionLost):
            raise AuthenticationError(
                "The server refused this worker's key")
        expected = digest(key, b"server", nonce, serverNonce)
        if not hmac.compare_digest(answer['digest'], expected):
            raise AuthenticationError(
                "The server could not prove that it has the key")


class _WireCall(Call):
    """A call to a WireServer, with the ID that RunTask gave it."""

    __slots__ = ("ID",)

    def __init__(self, task, raw, consumer):
        Call.__init__(self, task, raw, consumer)
        self.ID = None


#: The first protocol version whose servers take CancelTask.
CANCELLING_VERSION = 2


@implementer(IWorker)
class WireWorker(SlotsWorker):
    """
    Runs tasks on a WireServer reached at the client endpoint
    ``description`` (``"unix:/path"``, ``"tcp:host:port"``,
    ``"tls:host:port:trustRoots=..."``). The "function" of each call is the
    name of a method of the server's WireWorkerUniverse; ``wwu`` is an
    instance of that universe here (it is only checked).

    Up to ``N_concurrent`` calls are in flight at once. ``thread=True``
    runs the calls in a thread on the server; ``raw=True`` returns
    iterators as they are (they must pickle). The shared key comes from
    ``key``, ``keyFile`` or the ASYNQUEUE_WIRE_KEY(FILE) environment
    variables. Iterators come back as Deferators fetching
    ``iterationBatch`` items per round trip.

    A call that raises on the server comes back as an error (status
    ``e``), and I keep working. If the connection is lost, the calls in
    flight are handed back to the queue (status ``d``, retried once) and
    I resign. A call that times out or is cancelled is withdrawn if not
    yet sent, else the server cancels what its method returned (a call
    in a server thread runs on); its slot is free once the server
    answers.
    """

    callType = _WireCall
    pList = []
    tempDir = []
    cQualified = ['wire', 'remote']

    def __init__(self, wwu, description, series=[], raw=False,
                 thread=False, N_concurrent=1, key=None, keyFile=None,
                 iterationBatch=ITERATION_BATCH):
        WireWorkerUniverse.check(wwu)
        if not isinstance(N_concurrent, int) or N_concurrent < 1:
            raise ValueError(
                "N_concurrent must be a positive int, not {!r}".format(
                    N_concurrent))
        self.description = description
        self.iQualified = list(series)
        self.raw = raw
        self.thread = thread
        self.N_concurrent = N_concurrent
        self.iterationBatch = iterationBatch
        self.key = resolveKey(key, keyFile)
        self.ap = None
        self._callIDs = count(1)
        self._initSlots()
        self._state = "connecting"
        self._connectWaiters = []
        self._dClosed = defer.Deferred()
        self._dStopped = None
        self._reason = None
        endpoint = endpoints.clientFromString(reactor, description)
        self._dConnecting = endpoints.connectProtocol(
            endpoint, WireClientProtocol(self))
        self._dConnecting.addCallbacks(self._connected, self._notConnected)

    def __repr__(self):
        return "<WireWorker {} to {}>".format(
            getattr(self, "ID", "?"), self.description)

    # --- The connection --------------------------------------------------

    def whenConnected(self):
        """D→me once connected and authenticated; fails with the reason
        if that cannot be."""
        if self._state == "ready":
            return defer.succeed(self)
        if self._reason is not None:
            return defer.fail(self._reason)
        d = defer.Deferred()
        self._connectWaiters.append(d)
        return d

    def whenClosed(self):
        """D→None once my connection has closed (or never opened), whether
        I was stopped or it was lost."""
        d = defer.Deferred()
        self._dClosed.addBoth(relayTo, d)
        return d

    def _connected(self, ap):
        self._dConnecting = None
        self.ap = ap
        d = ap.handshake(self.key)
        d.addCallbacks(self._ready, self._handshakeFailed)

    def _ready(self, _):
        if self._state != "connecting":
            return
        self._state = "ready"
        self._fireConnectWaiters(self)
        self._pump()

    def _fireConnectWaiters(self, result):
        waiters, self._connectWaiters = self._connectWaiters, []
        for d in waiters:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)

    def _handshakeFailed(self, failure):
        self._fail(failure)
        if self.ap is not None and self.ap.transport is not None:
            self.ap.transport.loseConnection()

    def _notConnected(self, failure):
        self._dConnecting = None
        if failure.check(defer.CancelledError):
            failure = Failure(WireError("Connecting was cancelled"))
        self._fail(failure)
        self._closed()

    def _fail(self, failure):
        """I cannot work: say why, and resign."""
        if self._state in ("failed", "stopped"):
            return
        self._reason = failure
        log.error("%r cannot work: %s", self, failure.getErrorMessage())
        self._state = "failed"
        self._fireConnectWaiters(failure)
        self._resign()

    def _connectionLosing(self):
        """The connection is going: mark me so that no call is sent."""
        if self._state in ("connecting", "ready"):
            self._state = "lost"

    def _connectionLost(self, reason):
        """Calls in flight were reported lost (status d); resign unless I
        was stopping."""
        self._lostCalls(reason)
        if self._state == "lost":
            self._fail(reason)
        self._closed()

    def _closed(self):
        if not self._dClosed.called:
            self._dClosed.callback(None)
        self._wakeReady(everyone=True)
        self._checkStopped()

    def _lostCalls(self, reason):
        for call in list(self._inFlight):
            self._deliver(call, (b'd', "Lost the connection to {} while "
                                 "running {!r}: {}".format(
                                     self.description, call.task,
                                     reason.getErrorMessage())))

    # --- IWorker -------------------------------------------------------

    @property
    def slots(self):
        return self.N_concurrent

    def run(self, task):
        """Send ``task`` when a slot is free; fires when I can take
        another."""
        return self._admit(task)

    def _pump(self):
        while self._state == "ready" and self._waiting and \
                len(self._inFlight) < self.N_concurrent:
            self._send(self._waiting.popleft())

    def _send(self, call):
        try:
            arguments = self._arguments(call)
        except Exception as e:
            return self._deliver(call, (b'e', "Can't send {!r}: {}".format(
                call.task, e)))
        self._inFlight.append(call)
        if self.ap.version >= CANCELLING_VERSION:
            call.ID = arguments['callID'] = next(self._callIDs)
        d = self.ap.callRemote(RunTask, **arguments)
        d.addCallback(self._answered, call)
        d.addErrback(self._callFailed, call)

    def _arguments(self, call):
        """The RunTask arguments of a call; big ones as a payload."""
        f, args, kw = call.task.callTuple
        kw = dict(kw)
        if call.raw:
            kw['raw'] = True
        if self.thread:
            kw.setdefault('thread', True)
        arguments = {'methodName': o2p(_methodName(f))}
        if self.ap.legacy:
            arguments.update(args=o2p(args), kw=o2p(kw))
            if max(len(arguments['args']), len(arguments['kw'])) > \
                    amp.MAX_VALUE_LENGTH:
                raise WireError("the arguments are too big for an "
                                "AsynQueue 0.9 server")
            return arguments
        argsInline, argsSections = packObject(tuple(args))
        kwInline, kwSections = packObject(kw)
        if argsSections is None and kwSections is None:
            arguments.update(args=argsInline, kw=kwInline)
        else:
            arguments.update(args=b"", kw=b"", payload=dumpSections(
                (tuple(args), kw)))
        arguments['streaming'] = True
        return arguments

    def _answered(self, response, call):
        status, result = response['status'], response['result']
        if call.abandoned:
            return self._answeredAbandoned(call, response)
        if status == b'r':
            return self._deliverLoaded(call, b'r', result, None)
        if status == b'c':
            if response.get('payload') is not None:
                return self._deliverLoaded(
                    call, b'c', b"", response['payload'])
            return self._assemble(call, result)
        if status == b'n':
            return self._deliver(call, (b'n', None))
        if status == b'e':
            return self._deliver(
                call, (b'e', result.decode("utf-8", "replace")))
        if status == b'i':
            return self._iteration(call, result)
        self._deliver(call, (b'e', "Unknown status {!r} from {}".format(
            status, self.description)))

    def _answeredAbandoned(self, call, response):
        """The answer to a call given up on: have the server forget the
        iterator or big result it holds for it, and free its slot."""
        status = response['status']
        held = status == b'i' or (
            status == b'c' and response.get('payload') is None)
        if held and not self.ap.legacy:
            self.ap.callRemote(DropIterator, ID=response['result'])
        self._deliver(call, None)

    def cancelTask(self, task):
        """Abandon ``task`` (timed out or cancelled): withdraw it if not
        yet sent, else ask the server to cancel it. The queue has already
        failed its Deferred."""
        call, waiting = self._abandonCall(task)
        if waiting:
            self._wakeReady()
            self._checkStopped()
        elif call is not None and call.ID is not None and \
                self._state == "ready":
            self.ap.callRemote(CancelTask, callID=call.ID)

    def _deliverLoaded(self, call, status, inline, sections):
        try:
            value = unpackObject(inline, sections)
        except Exception as e:
            return self._deliver(call, (b'e', "Can't load the result of "
                                        "{!r}: {!r}".format(call.task, e)))
        self._deliver(call, (status, value))

    @defer.inlineCallbacks
    def _assemble(self, call, ID):
        """A chunked result (from a server that does not stream): fetch
        its chunks."""
        pickled = yield self._chunks(ID)
        self._deliverLoaded(call, b'c', pickled, None)

    @defer.inlineCallbacks
    def _chunks(self, ID):
        """D→the joined chunks of the chunked result ``ID``."""
        chunks = []
        while True:
            reply = yield self.ap.callRemote(GetNext, ID=ID)
            if not reply['isValid']:
                return b"".join(chunks)
            chunks.append(reply['value'])

    def _iteration(self, call, ID):
        remote = RemoteIterator(self, ID)
        d = remote.start()
        d.addCallback(self._iterating, remote, call)
        d.addErrback(self._callFailed, call)

    def _iterating(self, notEmpty, remote, call):
        if not notEmpty:
            return self._deliver(call, (b'i', []))
        dr = remote.deferator()
        self._deliver(call, iterationResult(dr, call.consumer))

    def _callFailed(self, failure, call):
        if call not in self._inFlight:
            return
        if self._state != "ready" or failure.check(
                error.ConnectionDone, error.ConnectionLost,
                amp.ConnectionLost):
            text = (b'd', "Lost the connection to {} while running {!r}: "
                    "{}".format(self.description, call.task,
                                failure.getErrorMessage()))
        else:
            text = (b'e', "{} could not run {!r}: {}".format(
                self.description, call.task, failure.getErrorMessage()))
        self._deliver(call, text)

    def _deliver(self, call, statusResult):
        """Report a call's outcome (unless abandoned) and free its slot."""
        if self._settle(call):
            call.task.callback(statusResult)
        self._pump()
        self._wakeReady()
        self._checkStopped()

    def stop(self):
        """Fires once every task handed to me is done and the connection
        is closed."""
        if self._dStopped is None:
            self._dStopped = defer.Deferred()
            self._checkStopped()
        d = defer.Deferred()
        self._dStopped.addBoth(relayTo, d)
        return d

    def _checkStopped(self):
        if self._dStopped is None or self._dStopped.called:
            return
        if self._state in ("connecting", "ready") and self._held():
            return
        if self._state in ("connecting", "ready"):
            self._state = "stopped"
        self._close()
        if self._dClosed.called:
            self._dStopped.callback(None)
        else:
            self._dClosed.addCallback(lambda _: self._checkStopped())

    def _close(self):
        if self._dConnecting is not None:
            self._dConnecting.cancel()
        elif self.ap is not None and self.ap.transport is not None:
            self.ap.transport.loseConnection()

    def crash(self):
        """Drop the connection now; return the unfinished tasks."""
        unfinished = self._abandonAll()
        if self._state in ("connecting", "ready", "lost"):
            self._state = "stopped"
        if self._dConnecting is not None:
            self._dConnecting.cancel()
        elif self.ap is not None and self.ap.transport is not None:
            self.ap.transport.abortConnection()
        return unfinished

    # --- 0.9 helpers ---------------------------------------------------

    def stopper(self):
        """Close the connection."""
        self._close()

    def assembleChunkedResult(self, ID):
        """D→the object of chunked result ``ID``, fetched with GetNext."""
        return self._chunks(ID).addCallback(p2o)

    def do_next(self, ID):
        """D→the next item of the server's iterator ``ID`` (one GetNext);
        fails with StopIteration at its end."""
        d = self.ap.callRemote(GetNext, ID=ID)
        return d.addCallback(_oneItem)

    def resign(self, *args):
        self._resign()


def _methodName(f):
    """The name of the remote method a call names: a str, or a method of
    a WireWorkerUniverse."""
    if isinstance(f, str):
        return f
    owner = getattr(f, "__self__", None)
    if owner is not None and isinstance(owner, WireWorkerUniverse):
        return f.__name__
    raise TypeError(
        "A WireWorker call names a method of the server's "
        "WireWorkerUniverse (a str), not {!r}".format(f))


def _oneItem(reply):
    """The item of a GetNext reply; StopIteration if there is none."""
    if not reply['isValid']:
        raise StopIteration
    return reply['value'] if reply['isRaw'] else p2o(reply['value'])


class RemoteIterator(BatchFetcher):
    """The worker's handle on an iterator a server holds for it: fetches
    its items in batches (one GetNext per item from a 0.9 server) and
    has the server drop it when the Deferator is stopped or dropped."""

    def __init__(self, worker, ID):
        BatchFetcher.__init__(self)
        self.worker = worker
        self.ap = worker.ap
        self.ID = ID

    def start(self):
        """D→whether there is a first item (fetching the first batch)."""
        if self.ap.legacy:
            self.prefetcher = Prefetcherator(self.ID)
            return self.prefetcher.setup(self._fetchOne)
        d = self.fetchBatch().addCallback(self.storeBatch)
        return d.addCallback(lambda _: bool(self.items))

    def deferator(self):
        fetch = self.prefetcher.getNext if self.ap.legacy else self.getNext
        dr = Deferator("remote iterator {!r} of {!r}".format(
            self.ID, self.worker), fetch)
        dr.d.addBoth(self.drop)
        weakref.finalize(dr, reactor.callFromThread, self.drop)
        return dr

    def fetchBatch(self):
        d = self.ap.callRemote(
            NextBatch, ID=self.ID, size=self.worker.iterationBatch)
        return d.addCallback(lambda reply: (
            unpackObject(reply['items'], reply['payload']),
            reply['moreLeft']))

    def _fetchOne(self):
        """The next item from a 0.9 server; StopIteration at the end."""
        d = self.ap.callRemote(GetNext, ID=self.ID)
        return d.addCallback(_oneItem).addErrback(self._ended)

    def _ended(self, failure):
        failure.trap(StopIteration)
        self.more = False
        return failure

    def drop(self, result=None):
        """Have the server forget the iterator, if it has items left; as
        a callback, pass ``result`` on."""
        if self.more:
            self.more = False
            self.items.clear()
            if not self.ap.legacy and self.ap.transport is not None:
                self.ap.callRemote(DropIterator, ID=self.ID)
        return result


for _public in (WireWorker, RemoteIterator):
    _public.__module__ = "asynqueue.wire"
