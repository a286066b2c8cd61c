"""
The wire protocol of asynqueue's remote workers: the AMP commands, the
shared-key handshake, and payloads of any size carried as raw bytes right
after the AMP box that announces them.

Both ends use ``WireProtocol``, an ``amp.AMP`` that also refuses boxes
that are too big or malformed, instead of letting a peer break it.
"""
import hashlib
import hmac
import errno
import ipaddress
import logging
import os
import pickle
import stat
from collections import deque

from twisted.internet import endpoints, main, tcp
from twisted.internet.interfaces import IPullProducer
from twisted.protocols import amp
from zope.interface import implementer

__all__ = [
    "RunTask", "GetNext", "Hello", "Authenticate", "NextBatch", "CancelTask",
    "DropIterator", "WireProtocol", "WireError", "AuthenticationError",
    "resolveKey", "digest", "dumpSections", "loadSections", "packObject",
    "unpackObject", "checkExposure",
]

log = logging.getLogger("asynqueue")

#: The environment variable holding a shared key, and the one naming a
#: file that holds it.
KEY_ENV = "ASYNQUEUE_WIRE_KEY"
KEYFILE_ENV = "ASYNQUEUE_WIRE_KEYFILE"
#: The shortest key accepted (bytes).
MIN_KEY_BYTES = 16
#: The version of the protocol that Hello negotiates: 2 adds RunTask's
#: ``callID`` and CancelTask.
PROTOCOL_VERSION = 2
#: Bytes of each random challenge.
NONCE_BYTES = 32
#: The biggest pickle sent inside a box value (AMP allows 65,535 bytes);
#: anything bigger travels as a payload.
INLINE_LIMIT = 60000
#: The biggest box, keys and values together, accepted from a peer that
#: has not authenticated, and from one that has.
PREAUTH_BOX_LIMIT = 4096
BOX_LIMIT = 1 << 20
#: The most sections (a pickle and its out-of-band buffers) in a payload.
MAX_SECTIONS = 1024
#: The key of the box entry that announces a payload.
PAYLOAD_KEY = b"_payload"


class WireError(Exception):
    """A remote call could not be made, or a server could not start."""


class AuthenticationError(WireError):
    """The two ends of a connection do not share the same key."""


# --- Commands ----------------------------------------------------------------

class Payload(amp.Argument):
    """
    An optional argument sent as raw bytes after its box: a list of
    sections (a pickle, then its out-of-band buffers), of any size. The
    box carries only their lengths, under ``_payload``.
    """

    def __init__(self):
        amp.Argument.__init__(self, optional=True)

    def toBox(self, name, strings, objects, proto):
        sections = objects.get(name.decode())
        if sections is not None:
            proto.attachPayload(strings, sections)

    def fromBox(self, name, strings, objects, proto):
        sections = strings.get(PAYLOAD_KEY)
        objects[name.decode()] = sections if isinstance(sections, list) \
            else None


class RunTask(amp.Command):
    """
    Run the named method of the server's WireWorkerUniverse.
    ``methodName`` is a pickled str, ``args`` and ``kw`` are pickles
    (``b""`` for none). The response's ``status`` is ``e`` (``result`` is
    error text), ``n`` (None), ``r`` (``result`` is a pickle), ``i``
    (``result`` is an iterator ID) or ``c`` (a big result: an ID for
    GetNext, or with ``streaming`` the pickle itself as a payload). A
    ``callID`` (protocol version 2) names the call for CancelTask.
    """
    arguments = [
        (b'methodName', amp.String()),
        (b'args', amp.String()),
        (b'kw', amp.String()),
        (b'streaming', amp.Boolean(optional=True)),
        (b'payload', Payload()),
        (b'callID', amp.Integer(optional=True)),
    ]
    response = [
        (b'status', amp.String()),
        (b'result', amp.String()),
        (b'payload', Payload()),
    ]


class GetNext(amp.Command):
    """The next item of an iterator (or chunk of a big result) with ID
    ``ID``; ``isValid`` False at the end. ``isRaw`` values are bytes as
    they are, the others pickles."""
    arguments = [(b'ID', amp.String())]
    response = [
        (b'value', amp.String()),
        (b'isValid', amp.Boolean()),
        (b'isRaw', amp.Boolean()),
    ]


class Hello(amp.Command):
    """The first command of a 1.0 client: protocol version and the
    client's challenge; the server answers with its own challenge and
    whether it needs a key."""
    arguments = [(b'version', amp.Integer()), (b'nonce', amp.String())]
    response = [
        (b'version', amp.Integer()),
        (b'nonce', amp.String()),
        (b'keyed', amp.Boolean()),
    ]


class Authenticate(amp.Command):
    """The client's proof that it has the key; the answer is the server's
    proof."""
    arguments = [(b'digest', amp.String())]
    response = [(b'digest', amp.String())]


class NextBatch(amp.Command):
    """Up to ``size`` items of an iterator, pickled as a list (inline or
    as a payload), and whether more are left."""
    arguments = [(b'ID', amp.String()), (b'size', amp.Integer())]
    response = [
        (b'items', amp.String()),
        (b'payload', Payload()),
        (b'moreLeft', amp.Boolean()),
    ]


class CancelTask(amp.Command):
    """Abandon the running call that RunTask named ``callID`` on this
    connection (protocol version 2): the server cancels the Deferred its
    method returned, and still answers the RunTask. A call running in a
    thread cannot be stopped and runs on."""
    arguments = [(b'callID', amp.Integer())]
    requiresAnswer = False


class DropIterator(amp.Command):
    """Forget an iterator the caller no longer wants."""
    arguments = [(b'ID', amp.String())]
    requiresAnswer = False


# --- Keys --------------------------------------------------------------------

def resolveKey(key=None, keyFile=None):
    """
    The shared key as bytes, or None: ``key`` (str or bytes), else the
    contents of ``keyFile``, else the environment variable
    ``ASYNQUEUE_WIRE_KEY``, else the file named by
    ``ASYNQUEUE_WIRE_KEYFILE``. Raises ValueError for a key that is too
    short and for a key file that others may read.
    """
    if key is None and keyFile is None:
        key = os.environ.get(KEY_ENV) or None
        keyFile = os.environ.get(KEYFILE_ENV) or None
        if key is not None:
            keyFile = None
    if key is None and keyFile is not None:
        key = _readKeyFile(keyFile)
    if key is None:
        return None
    if isinstance(key, str):
        key = key.encode("utf-8")
    if not isinstance(key, bytes):
        raise TypeError("A wire key must be str or bytes, not {!r}".format(
            type(key).__name__))
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(
            "A wire key must have at least {} bytes; make one with: "
            "python -c 'import secrets; print(secrets.token_hex(32))'".format(
                MIN_KEY_BYTES))
    return key


def _readKeyFile(path):
    """The key in file ``path`` (without its trailing newline)."""
    path = os.path.expanduser(path)
    mode = os.stat(path).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(
            "Key file {} may be read or written by others; "
            "run: chmod 600 {}".format(path, path))
    with open(path, "rb") as fh:
        return fh.read().strip()


def digest(key, role, first, second):
    """The HMAC-SHA256 proof that ``role`` (b"client" or b"server") has
    ``key``, over the two challenges."""
    return hmac.new(
        key, b"asynqueue-wire " + role + first + second,
        hashlib.sha256).digest()


def checkExposure(endpoint, description, key):
    """Raise WireError for a server endpoint reachable from other hosts
    (anything but loopback TCP and UNIX sockets) when there is no key."""
    if key is not None or isinstance(endpoint, endpoints.UNIXServerEndpoint):
        return
    interface = getattr(endpoint, "_interface", None)
    if interface is not None and _isLoopback(interface):
        return
    raise WireError(
        "Refusing to serve {!r} without a key: anyone who can reach it "
        "could run code here. Listen on loopback (e.g. "
        "'tcp:1978:interface=127.0.0.1') or a UNIX socket, or give the "
        "server a key (key=..., keyFile=..., or the {} environment "
        "variable).".format(description, KEY_ENV))


def _isLoopback(interface):
    if interface == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False


# --- Pickles in sections -----------------------------------------------------

def dumpSections(obj):
    """``obj`` pickled (protocol 5) as a list of sections: the pickle,
    then its out-of-band buffers, uncopied."""
    buffers = []
    data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    sections = [data]
    for buffer in buffers:
        sections.append(buffer.raw())
    if len(sections) > MAX_SECTIONS:
        return [pickle.dumps(obj, protocol=5)]
    return sections


def loadSections(sections):
    """The object that ``dumpSections`` gave ``sections`` for."""
    return pickle.loads(sections[0], buffers=sections[1:])


def packObject(obj):
    """``(inline, sections)``: ``obj`` as one pickle small enough for a
    box value (``sections`` None), or as a payload (``inline`` b"")."""
    sections = dumpSections(obj)
    if len(sections) == 1 and len(sections[0]) <= INLINE_LIMIT:
        return sections[0], None
    if sum(len(section) for section in sections) <= INLINE_LIMIT:
        return pickle.dumps(obj, protocol=5), None
    return b"", sections


def unpackObject(inline, sections):
    """The object that ``packObject`` gave ``(inline, sections)`` for."""
    if sections is not None:
        return loadSections(sections)
    return pickle.loads(inline)


# --- The protocol ------------------------------------------------------------

class _Incoming:
    """A payload being received: sections filled in order."""

    __slots__ = ("box", "sections", "index", "filled")

    def __init__(self, box, lengths):
        self.box = box
        self.sections = [_allocate(length) for length in lengths]
        self.index = 0
        self.filled = 0
        self._skipFull()

    def _skipFull(self):
        while self.index < len(self.sections) and \
                self.filled == len(self.sections[self.index]):
            self.index += 1
            self.filled = 0

    @property
    def complete(self):
        return self.index >= len(self.sections)

    def room(self):
        """A writable view of what the current section still lacks."""
        return memoryview(self.sections[self.index]).cast("B")[self.filled:]

    def advance(self, n):
        """``n`` more bytes of the current section have been filled."""
        self.filled += n
        self._skipFull()

    def feed(self, data):
        """Copy what belongs to the payload; return the bytes after it."""
        view = memoryview(data)
        while view and not self.complete:
            room = self.room()
            n = min(len(room), len(view))
            room[:n] = view[:n]
            view = view[n:]
            self.advance(n)
        return bytes(view) if view else b""


#: Sections from this size on are allocated without being zeroed first.
BIG_SECTION = 1 << 20


def _allocate(length):
    """A writable buffer of ``length`` bytes for a section."""
    if length >= BIG_SECTION:
        try:
            import numpy
        except ImportError:
            pass
        else:
            return numpy.empty(length, numpy.uint8)
    return bytearray(length)


def _canReadDirectly(transport):
    """Whether ``transport`` is a plain socket connection that a payload
    can be read from straight into its buffers."""
    return isinstance(transport, tcp.Connection) and \
        "doRead" not in transport.__dict__


#: Payloads from this size on are sent straight from their memory.
DIRECT_SEND = 1 << 20


def _canWriteDirectly(transport):
    """Whether a payload can be sent to ``transport``'s socket directly."""
    return isinstance(transport, tcp.Connection) and \
        transport.producer is None and \
        hasattr(transport, "dataBuffer") and hasattr(transport, "_tempDataLen")


@implementer(IPullProducer)
class _PayloadSender:
    """
    Sends a payload's sections from their own memory to the socket,
    without copying them into Twisted's buffer: a pull producer of the
    transport, which calls it each time its own buffer is empty. When the
    socket is full, a small piece goes through Twisted, to be called back
    once the socket can take more.
    """

    CHUNK = 4 << 20
    PIECE = 1 << 16

    def __init__(self, protocol, sections):
        self.protocol = protocol
        self.transport = protocol.transport
        self.views = deque(
            memoryview(section).cast("B") for section in sections
            if len(section))

    def start(self):
        self.transport.registerProducer(self, False)

    def resumeProducing(self):
        transport = self.transport
        if len(transport.dataBuffer) > transport.offset or \
                transport._tempDataLen:
            return
        while self.views:
            view = self.views[0]
            chunk = view[:self.CHUNK]
            try:
                n = transport.socket.send(chunk)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError:
                return self.stopProducing()
            if n == len(view):
                self.views.popleft()
                continue
            self.views[0] = view[n:]
            if n < len(chunk):
                self._leavePiece()
                return
        self._finish()

    def _leavePiece(self):
        """The socket is full: give Twisted a little to write later."""
        view = self.views[0]
        self.transport.write(bytes(view[:self.PIECE]))
        self.views[0] = view[self.PIECE:]
        if not len(self.views[0]):
            self.views.popleft()

    def _finish(self):
        self.transport.unregisterProducer()
        self.protocol._payloadSent()

    def stopProducing(self):
        """The connection is gone."""
        self.views.clear()
        if self.transport.producer is self:
            self.transport.unregisterProducer()


def _widen(transport, readSize, sendSize):
    """Let a socket transport read ``readSize`` and write ``sendSize``
    bytes per system call: big payloads then cost fewer wake-ups."""
    if hasattr(transport, "bufferSize") and hasattr(transport, "SEND_LIMIT"):
        transport.bufferSize = max(transport.bufferSize, readSize)
        transport.SEND_LIMIT = max(transport.SEND_LIMIT, sendSize)


class WireProtocol(amp.AMP):
    """
    AMP with payloads (raw sections after a box that lists their lengths
    under ``_payload``) and with limits: a box bigger than ``boxLimit``, a
    payload bigger than ``maxPayload`` or one not allowed yet, and a box
    that AMP cannot handle all drop the connection.
    """

    boxLimit = BOX_LIMIT
    maxPayload = 1 << 40
    payloadsAllowed = True
    #: Bytes read from and written to the socket per system call at most
    #: (Twisted's defaults are 64 KiB and 128 KiB). Payloads are read
    #: straight into their buffers, so bigger reads only cost: each read
    #: allocates its size, and most messages are small.
    readSize = 1 << 16
    sendSize = 4 << 20

    def __init__(self, *args, **kw):
        amp.AMP.__init__(self, *args, **kw)
        self.refused = False
        self._boxBytes = 0
        self._incoming = None
        self._carry = b""
        self._outgoing = {}
        self._sender = None
        self._queue = deque()

    def makeConnection(self, transport):
        _widen(transport, self.readSize, self.sendSize)
        amp.AMP.makeConnection(self, transport)

    # --- Sending -----------------------------------------------------------

    def attachPayload(self, box, sections):
        """Send ``sections`` right after ``box``."""
        box[PAYLOAD_KEY] = b",".join(
            str(len(section)).encode() for section in sections)
        self._outgoing[id(box)] = sections

    def sendBox(self, box):
        sections = self._outgoing.pop(id(box), None) \
            if PAYLOAD_KEY in box else None
        if self.transport is None:
            raise amp.ConnectionLost()
        if self._sender is not None:
            self._queue.append((box, sections))
        else:
            self._sendNow(box, sections)

    def _sendNow(self, box, sections):
        """Write a box and its payload: a big payload goes from its own
        memory straight to the socket, the rest through Twisted."""
        if sections is None:
            return amp.AMP.sendBox(self, box)
        if sum(len(section) for section in sections) < DIRECT_SEND or \
                not _canWriteDirectly(self.transport):
            return self.transport.write(
                b"".join([box.serialize()] + sections))
        self.transport.write(box.serialize())
        self._sender = _PayloadSender(self, sections)
        self._sender.start()

    def _payloadSent(self):
        """The payload being sent is out: send what waited for it."""
        self._sender = None
        while self._queue and self._sender is None and \
                self.transport is not None:
            self._sendNow(*self._queue.popleft())

    # --- Receiving ---------------------------------------------------------

    def dataReceived(self, data):
        while data and not self.refused:
            incoming = self._incoming
            if incoming is not None:
                data = incoming.feed(data)
                if incoming.complete:
                    self._payloadArrived()
                continue
            amp.AMP.dataReceived(self, data)
            data, self._carry = self._carry, b""

    def stringReceived(self, string):
        self._boxBytes += len(string) + 2
        if self._boxBytes > self.boxLimit:
            return self.refuse("sent a box of more than {} bytes".format(
                self.boxLimit))
        return amp.AMP.stringReceived(self, string)

    def ampBoxReceived(self, box):
        self._boxBytes = 0
        header = box.get(PAYLOAD_KEY)
        if header is None:
            return self._dispatch(box)
        lengths = self._payloadLengths(header)
        if lengths is None:
            return
        incoming = _Incoming(box, lengths)
        if incoming.complete:
            box[PAYLOAD_KEY] = incoming.sections
            return self._dispatch(box)
        self._incoming = incoming
        # What follows the box belongs to the payload: take it from AMP's
        # parser, which then stops (the trick of AMP's own _switchTo).
        self._carry = self.recvd
        self.recvd = b""
        if _canReadDirectly(self.transport):
            self.transport.doRead = self._readDirectly

    def _readDirectly(self):
        """The transport's doRead while a payload arrives: the socket
        writes straight into the payload's buffers (no copies, no
        allocations)."""
        transport = self.transport
        incoming = self._incoming
        if incoming is None or self._carry or self.refused:
            del transport.doRead
            return transport.doRead()
        try:
            n = transport.socket.recv_into(incoming.room())
        except OSError as e:
            if e.args[0] in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EINTR):
                return None
            return main.CONNECTION_LOST
        if not n:
            return main.CONNECTION_DONE
        incoming.advance(n)
        if incoming.complete:
            del transport.doRead
            self._payloadArrived()
        return None

    def _payloadArrived(self):
        incoming, self._incoming = self._incoming, None
        incoming.box[PAYLOAD_KEY] = incoming.sections
        self._dispatch(incoming.box)

    def _payloadLengths(self, header):
        """The section lengths announced, or None (and the connection is
        dropped) if they are malformed, too big or not allowed."""
        if not self.payloadsAllowed:
            self.refuse("sent a payload before authenticating")
            return None
        try:
            lengths = [int(part) for part in header.split(b",")]
        except ValueError:
            lengths = None
        if not lengths or len(lengths) > MAX_SECTIONS or \
                min(lengths) < 0 or sum(lengths) > self.maxPayload:
            self.refuse("announced a malformed or oversized payload")
            return None
        return lengths

    def _dispatch(self, box):
        """Hand a complete box to AMP; one it cannot handle drops the
        connection."""
        try:
            amp.AMP.ampBoxReceived(self, box)
        except Exception as error:
            self.refuse("sent a box AMP cannot handle ({!r})".format(error))

    def refuse(self, why):
        """Drop the connection with a peer that broke the protocol."""
        if self.refused:
            return
        self.refused = True
        log.warning("Dropping the connection with %s, which %s",
                    self._peerText(), why)
        if "recvd" not in self.__dict__:
            self.recvd = b""
        if self.transport is not None:
            self.transport.abortConnection()

    def _peerText(self):
        try:
            return str(self.transport.getPeer())
        except Exception:
            return "a peer"

    def connectionLost(self, reason):
        if self.transport is not None:
            self.transport.__dict__.pop("doRead", None)
        self._incoming = None
        self._outgoing.clear()
        self._queue.clear()
        amp.AMP.connectionLost(self, reason)
