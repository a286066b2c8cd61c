"""
The server end of asynqueue's remote workers: ``WireWorkerUniverse`` (the
methods clients may call), ``WireRunner`` (runs them and holds iterators
for the callers), and ``WireServer``, which serves a universe over AMP
with authentication. Import these from ``asynqueue.wire``.
"""
import hmac
import inspect
import secrets
import sys
from itertools import count

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer, endpoints, protocol, reactor
from twisted.protocols import amp
from twisted.python import reflect
from twisted.python.failure import Failure

from . import iteration, util
from .info import Info
from .util import o2p, p2o
from .wireproto import (
    BOX_LIMIT, NONCE_BYTES, PREAUTH_BOX_LIMIT, PROTOCOL_VERSION,
    Authenticate, CancelTask, DropIterator, GetNext, Hello, NextBatch,
    RunTask, WireProtocol, checkExposure, digest, log, packObject,
    resolveKey, unpackObject)

__all__ = [
    "DEFAULT_WWU_FQN", "WireWorkerUniverse", "ChunkyString", "WireRunner",
    "WireServer",
]

DEFAULT_WWU_FQN = "asynqueue.wire.WireWorkerUniverse"
#: Seconds a client of a keyed server has to authenticate.
HANDSHAKE_TIMEOUT = 10.0
#: Seconds a stopping server waits for the calls still running.
STOP_TIMEOUT = 10.0
#: The most items a NextBatch returns, whatever the caller asks.
MAX_BATCH = 10000


class WireWorkerUniverse(amp.CommandLocator):
    """
    Subclass me on the server: each public method of the subclass (name
    not starting with ``_``) is a call that clients may make by name. A
    method may return a Deferred, and runs in the reactor thread unless
    the call is made with ``thread=True``.

    ``ws`` is the WireServer serving me, if any. My ``runTask`` and
    ``getNext`` answer RunTask and GetNext for an ``amp.AMP(locator=me)``
    of your own; a WireServer answers for me, per connection.

    When a client gives up on a call (it timed out, was cancelled, or the
    client went away), a WireServer cancels the Deferred my method
    returned; set ``cancelAbandoned = False`` if my methods hand out
    Deferreds that other callers share.
    """

    #: Cancel what a method returned when its client gives up on the call.
    cancelAbandoned = True

    @classmethod
    def check(cls, instance):
        """True if ``instance`` is a WireWorkerUniverse; TypeError
        otherwise."""
        for baseClass in inspect.getmro(type(instance)):
            if reflect.fullyQualifiedName(baseClass) == DEFAULT_WWU_FQN:
                return True
        raise TypeError(
            "You must provide a WireWorkerUniverse subclass instance, "
            "not {!r}".format(instance))

    def __init__(self, wireServer=None):
        self.ws = wireServer
        super().__init__()

    @property
    def wr(self):
        """The WireRunner that runs my calls (made on first use)."""
        runner = self.__dict__.get("wr")
        if runner is None:
            runner = self.__dict__["wr"] = WireRunner()
            self.info = Info()
        return runner

    @RunTask.responder
    def runTask(self, methodName, args, kw, streaming=None, payload=None,
                callID=None):
        """Run my method ``methodName`` (pickled) with the pickled
        ``args`` and ``kw``: D→the RunTask response."""
        return self._runTask(methodName, args, kw, payload, streaming, None)

    @GetNext.responder
    def getNext(self, ID):
        """The next item of an iterator or big result: D→the GetNext
        response."""
        return self.wr.getNext(ID)

    def _runTask(self, methodName, args, kw, payload, streaming, owner,
                 callID=None):
        """Load the call, check that it names one of my public methods,
        and run it; anything wrong becomes an ``e`` response. A call with
        a ``callID`` that runs in the reactor can be cancelled through
        its connection ``owner``."""
        runner = self.wr
        try:
            name = p2o(methodName)
            if payload is not None:
                args, kw = unpackObject(b"", payload)
            else:
                args, kw = p2o(args, []), p2o(kw, {})
        except Exception as error:
            return _errorResponse(
                "Couldn't load the call: {!r}".format(error))
        func = self._method(name)
        if func is None:
            text = self.info.setCall(
                str(name), list(args), dict(kw)).aboutCall()
            return _errorResponse(
                "Couldn't run call '{}': {!r} is not a public method of "
                "{}".format(text, name, type(self).__name__))
        d = runner.run(func, args, kw, owner=owner, streaming=streaming)
        if callID is not None and owner is not None and \
                self.cancelAbandoned and not kw.get("thread"):
            owner.trackCall(callID, d)
        return d.addCallback(_encodeResponse)

    def _method(self, name):
        """My method ``name`` if clients may call it, else None."""
        if not isinstance(name, str) or name.startswith("_") or \
                hasattr(WireWorkerUniverse, name):
            return None
        func = getattr(self, name, None)
        return func if callable(func) else None


def _errorResponse(text):
    return {'status': b'e', 'result': text.encode("utf-8", "replace")}


def _encodeResponse(response):
    """Error text goes over the wire as UTF-8."""
    if isinstance(response['result'], str):
        response['result'] = response['result'].encode("utf-8", "replace")
    return response


class ChunkyString:
    """Iterates over slices of ``chunkSize`` bytes of a big string,
    dropping its reference to the string after the last one."""

    chunkSize = 2**15

    def __init__(self, bigString):
        self.k0 = 0
        self.N = len(bigString)
        self.bigString = bigString

    def __iter__(self):
        return self

    def __next__(self):
        if not hasattr(self, "bigString"):
            raise StopIteration
        k1 = min(self.k0 + self.chunkSize, self.N)
        chunk = self.bigString[self.k0:k1]
        if k1 >= self.N:
            del self.bigString
        else:
            self.k0 = k1
        return chunk


class _Held:
    """An iterator held for a caller: the connection that owns it and the
    item fetched ahead, if any."""

    __slots__ = ("owner", "ahead", "thread")
    NOTHING = object()

    def __init__(self, owner, thread=False):
        self.owner = owner
        self.thread = thread
        self.ahead = self.NOTHING


class WireRunner:
    """
    Runs the calls of a WireWorkerUniverse and holds the iterators (and
    big results) that callers fetch item by item or in batches. Each is
    forgotten at its end, when its caller drops it, or when the
    connection that asked for it is lost.

    A call with ``thread=True`` runs in a ThreadLooper of mine, and so do
    the fetches of the iterator it returns.
    """

    def __init__(self):
        self.iterators = {}
        self.deferators = {}
        self.info = Info()
        self.dt = util.DeferredTracker()
        self._held = {}
        self._IDs = count(1)

    # --- Calls ---------------------------------------------------------

    def call(self, f, *args, **kw):
        """Run ``f(*args, **kw)``: D→``{'status': ..., 'result': ...}``,
        a pickle over 32 KiB becoming a ChunkyString for GetNext."""
        return self.run(f, args, kw)

    def run(self, f, args, kw, owner=None, streaming=False):
        """Run a call for connection ``owner``; with ``streaming``, a big
        result comes back as a payload instead of a ChunkyString."""
        kw = dict(kw)
        raw = kw.pop("raw", False)
        thread = kw.pop("thread", False)
        d = self._threaded(f, args, kw) if thread else \
            self._inReactor(f, args, kw)
        d.addCallback(self._response, raw, owner, streaming, thread)
        return self.dt.put(d)

    def _inReactor(self, f, args, kw):
        d = defer.maybeDeferred(f, *args, **kw)
        return d.addCallbacks(
            lambda result: (b'r', result),
            lambda failure: (b'e', self.info.setCall(
                f, list(args), kw).aboutFailure(failure)))

    def _threaded(self, f, args, kw):
        if getattr(self, "t", None) is None:
            from .threads import ThreadLooper
            self.t = ThreadLooper(raw=True)
        return self.t.call(f, *args, **kw)

    def _response(self, statusResult, raw, owner, streaming, thread):
        status, result = statusResult
        if status == b'e':
            return {'status': b'e', 'result': result}
        if result is None:
            return {'status': b'n', 'result': b""}
        if not raw and iteration.Deferator.isIterator(result):
            if inspect.isgeneratorfunction(result):
                result = result()
            return {'status': b'i',
                    'result': self.keep(result, owner, thread)}
        try:
            return self._pickled(result, owner, streaming)
        except Exception as error:
            return {'status': b'e', 'result':
                    "Can't pickle the result {!r}: {!r}".format(
                        type(result).__name__, error)}

    def _pickled(self, result, owner, streaming):
        if streaming:
            inline, sections = packObject(result)
            if sections is None:
                return {'status': b'r', 'result': inline}
            return {'status': b'c', 'result': b"", 'payload': sections}
        pickled = o2p(result)
        if len(pickled) > ChunkyString.chunkSize:
            return {'status': b'c',
                    'result': self.keep(ChunkyString(pickled), owner)}
        return {'status': b'r', 'result': pickled}

    # --- Iterators -----------------------------------------------------

    def keep(self, iterator, owner=None, thread=False):
        """Hold ``iterator`` for connection ``owner``; return its ID."""
        ID = str(next(self._IDs)).encode()
        self.iterators[ID] = iterator
        self._held[ID] = _Held(owner, thread)
        if owner is not None:
            owner.iteratorIDs.add(ID)
        return ID

    def drop(self, ID, owner=None):
        """Forget iterator ``ID`` (only if ``owner`` holds it)."""
        held = self._held.get(ID)
        if held is not None and held.owner is not owner:
            return
        self.iterators.pop(ID, None)
        self._held.pop(ID, None)
        if owner is not None:
            owner.iteratorIDs.discard(ID)

    def dropAll(self, owner):
        """Forget every iterator of connection ``owner``."""
        for ID in list(owner.iteratorIDs):
            self.drop(ID, owner)

    def _lookup(self, ID, owner):
        """The iterator ``ID`` and its holding, if ``owner`` may use it."""
        iterator = self.iterators.get(ID)
        held = self._held.get(ID)
        if held is None and iterator is not None:
            held = self._held[ID] = _Held(None)
        if iterator is None or (owner is not None and held.owner is not owner):
            return None, None
        return iterator, held

    def getNext(self, ID, owner=None):
        """D→the GetNext response for the next item of iterator ``ID``."""
        return self.dt.put(
            self._fetch(ID, owner, 1).addCallback(self._nextResponse))

    @staticmethod
    def _nextResponse(itemsMore):
        items, more = itemsMore
        if not items:
            return {'value': b"", 'isValid': False, 'isRaw': False}
        value = items[0]
        if isinstance(value, bytes):
            return {'value': value, 'isValid': True, 'isRaw': True}
        return {'value': o2p(value), 'isValid': True, 'isRaw': False}

    def nextBatch(self, ID, size, owner=None):
        """D→(items, moreLeft): up to ``size`` items of iterator ``ID``."""
        size = max(1, min(int(size), MAX_BATCH))
        return self.dt.put(self._fetch(ID, owner, size))

    def _fetch(self, ID, owner, size):
        iterator, held = self._lookup(ID, owner)
        if iterator is None:
            return defer.succeed(([], False))
        looper = getattr(self, "t", None)
        if held.thread and looper is not None:
            d = looper.deferToThread(_takeBatch, iterator, held, size)
        else:
            d = defer.maybeDeferred(_takeBatch, iterator, held, size)
        return d.addCallbacks(
            self._fetched, self._fetchFailed,
            callbackArgs=(ID, held), errbackArgs=(ID, held))

    def _fetched(self, itemsMore, ID, held):
        if not itemsMore[1]:
            self.drop(ID, held.owner)
        return itemsMore

    def _fetchFailed(self, failure, ID, held):
        self.drop(ID, held.owner)
        log.error("Iterator %r ended with an error: %s", ID,
                  failure.getTraceback())
        return [], False

    def shutdown(self, timeout=None):
        """Stop my thread, if any; D→True once every call has finished
        (False if ``timeout`` seconds pass first)."""
        looper = getattr(self, "t", None)
        if looper is not None:
            self.t = None
            self.dt.put(looper.stop())
        return self.dt.deferToAll(timeout)


def _takeBatch(iterator, held, size):
    """Up to ``size`` items of ``iterator`` and whether more are left,
    keeping the item that tells ahead in ``held``. An exception other than
    StopIteration ends the iterator after the items taken so far."""
    items = []
    if held.ahead is not _Held.NOTHING:
        items.append(held.ahead)
        held.ahead = _Held.NOTHING
    try:
        while len(items) < size:
            items.append(next(iterator))
        held.ahead = next(iterator)
    except StopIteration:
        return items, False
    except Exception:
        if not items:
            raise
        sys.stderr.write("Iterator ended with an error:\n{}\n".format(
            Failure().getTraceback()))
        return items, False
    return items, True


# --- Serving -----------------------------------------------------------------

class WireServerProtocol(WireProtocol):
    """
    One client's connection to a WireServer. With a key, nothing but
    Hello and Authenticate is accepted until the client has proved it
    has the key (and no payload, and no box over 4 KiB); a client that
    does not manage that within ``HANDSHAKE_TIMEOUT`` is dropped.
    """

    def __init__(self, server):
        WireProtocol.__init__(self)
        self.server = server
        self.universe = server.wwu
        self.key = server.key
        self.maxPayload = server.maxPayload
        self.iteratorIDs = set()
        #: callID -> the Deferred of a call running in the reactor.
        self.calls = {}
        self.serverNonce = self.clientNonce = None
        self._timer = None
        self.authenticated = self.key is None
        if not self.authenticated:
            self.boxLimit = PREAUTH_BOX_LIMIT
            self.payloadsAllowed = False

    def connectionMade(self):
        WireProtocol.connectionMade(self)
        self.server.factory.connections.add(self)
        if not self.authenticated:
            self._timer = reactor.callLater(
                HANDSHAKE_TIMEOUT, self.refuse, "did not authenticate in time")

    def connectionLost(self, reason):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self.universe.wr.dropAll(self)
        calls, self.calls = self.calls, {}
        for d in calls.values():
            d.cancel()
        WireProtocol.connectionLost(self, reason)
        self.server.factory.connectionEnded(self)

    def locateResponder(self, name):
        if not self.authenticated and name not in (
                Hello.commandName, Authenticate.commandName):
            self.refuse("sent {!r} before authenticating".format(name))
            return None
        return WireProtocol.locateResponder(self, name)

    def dispatchCommand(self, box):
        """Bad arguments get an error answer, not a dropped connection."""
        return WireProtocol.dispatchCommand(self, box).addErrback(
            _badRequest, box)

    @Hello.responder
    def hello(self, version, nonce):
        if not 16 <= len(nonce) <= 64:
            raise amp.RemoteAmpError(b"BAD_NONCE", "Bad challenge length")
        self.clientNonce = nonce
        self.serverNonce = secrets.token_bytes(NONCE_BYTES)
        return {'version': PROTOCOL_VERSION, 'nonce': self.serverNonce,
                'keyed': self.key is not None}

    @Authenticate.responder
    def authenticate(self, digest):
        if self.key is None:
            return {'digest': b""}
        expected = None if self.serverNonce is None else _digest(
            self.key, b"client", self.serverNonce, self.clientNonce)
        if expected is None or not hmac.compare_digest(digest, expected):
            self.refuse("failed to authenticate")
            raise amp.RemoteAmpError(b"AUTH", "Authentication failed")
        self.authenticated = True
        self.boxLimit = BOX_LIMIT
        self.payloadsAllowed = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        return {'digest': _digest(
            self.key, b"server", self.clientNonce, self.serverNonce)}

    @RunTask.responder
    def runTask(self, methodName, args, kw, streaming=None, payload=None,
                callID=None):
        return self.universe._runTask(
            methodName, args, kw, payload, streaming, self, callID)

    def trackCall(self, callID, d):
        """Keep the Deferred of running call ``callID`` for CancelTask
        (and for cancelling when the client goes) until it fires."""
        if not d.called:
            self.calls[callID] = d
            d.addBoth(self._untrack, callID)

    def _untrack(self, result, callID):
        self.calls.pop(callID, None)
        return result

    @CancelTask.responder
    def cancelTask(self, callID):
        d = self.calls.pop(callID, None)
        if d is not None:
            d.cancel()
        return {}

    @GetNext.responder
    def getNext(self, ID):
        return self.universe.wr.getNext(ID, self)

    @NextBatch.responder
    def nextBatch(self, ID, size):
        d = self.universe.wr.nextBatch(ID, size, self)
        return d.addCallback(_batchResponse)

    @DropIterator.responder
    def dropIterator(self, ID):
        self.universe.wr.drop(ID, self)
        return {}


#: The proof function, under a name the Authenticate responder's argument
#: (``digest``, as the wire names it) does not hide.
_digest = digest


def _batchResponse(itemsMore):
    items, more = itemsMore
    try:
        inline, sections = packObject(items)
    except Exception as error:
        raise amp.RemoteAmpError(
            b"PICKLE", "Can't pickle the items: {!r}".format(error))
    return {'items': inline, 'payload': sections, 'moreLeft': more}


def _badRequest(failure, box):
    """A command that failed other than by a RemoteAmpError: answer with
    an error, keeping the connection."""
    if failure.check(amp.RemoteAmpError):
        return failure
    return Failure(amp.RemoteAmpError(
        b"BAD_REQUEST", "Bad {!r} request: {}".format(
            box.get(amp.COMMAND), failure.getErrorMessage())))


class WireServerFactory(protocol.Factory):
    """Makes the connections of a WireServer and keeps track of them."""

    def __init__(self, server):
        self.server = server
        self.connections = set()
        self._waiters = []

    def buildProtocol(self, addr):
        return WireServerProtocol(self.server)

    def connectionEnded(self, connection):
        self.connections.discard(connection)
        if not self.connections:
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(None)

    def dropAll(self):
        """Close every connection: D→None once all are gone."""
        if not self.connections:
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiters.append(d)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abortConnection()
        return d


class WireService(StreamServerEndpointService):
    """
    The service of a WireServer (a StreamServerEndpointService, for
    ``.tac`` files) that reports where it listens, or why it could not,
    and closes the open connections when stopped.
    """

    def __init__(self, endpoint, factory):
        StreamServerEndpointService.__init__(self, endpoint, factory)
        self.port = None
        self._outcome = None
        self._waiters = []

    def privilegedStartService(self):
        service.Service.privilegedStartService(self)
        self._waitingForPort = self.endpoint.listen(self.factory)
        self._waitingForPort.addBoth(self._listened)

    def startService(self):
        service.Service.startService(self)
        if self._waitingForPort is None:
            self.privilegedStartService()

    def _listened(self, result):
        if not isinstance(result, Failure):
            self.port = result
        self._outcome = result
        waiters, self._waiters = self._waiters, []
        if isinstance(result, Failure) and not waiters:
            log.error("WireServer could not listen: %s",
                      result.getErrorMessage())
        for d in waiters:
            d.callback(result)

    def listening(self):
        """D→the listening port, once listening (or the failure)."""
        if self._outcome is not None:
            return defer.succeed(self._outcome)
        d = defer.Deferred()
        self._waiters.append(d)
        return d

    @defer.inlineCallbacks
    def stopService(self):
        service.Service.stopService(self)
        dPort, self._waitingForPort = self._waitingForPort, None
        if dPort is not None and self._outcome is None:
            dPort.cancel()
        port, self.port, self._outcome = self.port, None, None
        if port is not None:
            yield port.stopListening()
        yield self.factory.dropAll()


class WireServer:
    """
    Serves a WireWorkerUniverse (an instance, or the fully qualified name
    of a subclass, instantiated with me) at a Twisted endpoint
    ``description``, e.g. ``"unix:/tmp/wire.sock"``,
    ``"tcp:1978:interface=127.0.0.1"`` or ``"ssl:1978:privateKey=..."``.

    With a key (``key``, ``keyFile``, or the ASYNQUEUE_WIRE_KEY /
    ASYNQUEUE_WIRE_KEYFILE environment variables), clients must prove
    they have it before any call. Without one, only loopback TCP and UNIX
    sockets are served. ``maxPayload`` bounds the bytes of one call.
    ``service`` can go in the application of a ``.tac`` file.
    """

    triggerID = None

    def __init__(self, description, wwu, key=None, keyFile=None,
                 maxPayload=1 << 34):
        if isinstance(wwu, str):
            wwu = reflect.namedObject(wwu)(self)
        WireWorkerUniverse.check(wwu)
        self.description = description
        self.wwu = wwu
        self.key = resolveKey(key, keyFile)
        self.maxPayload = maxPayload
        endpoint = endpoints.serverFromString(reactor, description)
        checkExposure(endpoint, description, self.key)
        self.factory = WireServerFactory(self)
        self.service = WireService(endpoint, self.factory)

    def start(self):
        """Start listening: D→the listening port (IListeningPort)."""
        if not self.service.running:
            self.service.startService()
        if self.triggerID is None:
            self.triggerID = reactor.addSystemEventTrigger(
                "before", "shutdown", self._reactorShutdown)
        return self.service.listening()

    def stop(self):
        """Stop listening, close every connection and wait (up to
        STOP_TIMEOUT seconds) for the calls in progress: D→None."""
        if self.triggerID is not None:
            reactor.removeSystemEventTrigger(self.triggerID)
        return self._stop()

    def _reactorShutdown(self):
        self.triggerID = None
        return self._stop()

    @defer.inlineCallbacks
    def _stop(self):
        self.triggerID = None
        if self.service.running:
            yield self.service.stopService()
        runner = self.wwu.__dict__.get("wr")
        if runner is not None:
            yield runner.shutdown(STOP_TIMEOUT)


WireWorkerUniverse.__module__ = "asynqueue.wire"
for _public in (ChunkyString, WireRunner, WireServer):
    _public.__module__ = "asynqueue.wire"
