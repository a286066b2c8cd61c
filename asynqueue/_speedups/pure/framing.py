"""
Binary frames for the parent/child pipe of process workers: a fixed header,
descriptors of out-of-band buffers placed in shared memory, and a pickle
(protocol 5) payload. This is the pure-Python twin of the compiled
``framing`` module; both behave identically and write identical bytes.

Wire format, little-endian. A 20-byte header ``<BBBBIQI``: version (1),
kind (1..255), flags (0..255, opaque here), reserved (0), request id,
payload length, buffer count. Then one 24-byte descriptor ``<IIQQ`` per
out-of-band buffer: segment, reserved (0), offset, length. Then the payload.
"""
import pickle
import struct
from collections import deque
from itertools import islice
from operator import index

__all__ = [
    "VERSION", "HEADER_SIZE", "DESCRIPTOR_SIZE", "DEFAULT_THRESHOLD",
    "ProtocolError", "Frame", "FrameWriter", "FrameReader", "copyOut",
]

#: The wire format version every header carries.
VERSION = 1
#: Bytes in a frame header.
HEADER_SIZE = 20
#: Bytes in one out-of-band buffer descriptor.
DESCRIPTOR_SIZE = 24
#: Buffers this large (in bytes) or larger go out of band when they can.
DEFAULT_THRESHOLD = 65536

_HEADER = struct.Struct("<BBBBIQI")
_DESCRIPTOR = struct.Struct("<IIQQ")
_UINT32_MAX = 2**32 - 1
_UINT64_MAX = 2**64 - 1
_COPY_OUT_ERROR = "copyOut needs a C- or Fortran-contiguous buffer"


class ProtocolError(Exception):
    """
    The byte stream is not a valid sequence of frames. The reader that
    raised it stays broken: the peer must be disconnected.
    """


def _checkRange(what, value, low, high):
    """``value`` as an int, or ValueError saying which value is bad."""
    number = index(value)
    if not low <= number <= high:
        raise ValueError("{} must be between {} and {}, not {!r}".format(
            what, low, high, value))
    return number


class Frame:
    """
    One received frame: ``kind``, ``flags``, ``requestID``, the pickle
    ``payload`` (a contiguous bytes-like) and ``buffers``, a tuple of
    ``(segment, offset, length)`` of its out-of-band buffers.
    """

    __slots__ = ("_kind", "_flags", "_requestID", "_payload", "_buffers")

    def __init__(self, kind, flags, requestID, payload, buffers=()):
        self._kind = kind
        self._flags = flags
        self._requestID = requestID
        self._payload = payload
        self._buffers = tuple(buffers)

    kind = property(lambda self: self._kind, doc="The message kind (1..255).")
    flags = property(lambda self: self._flags, doc="Opaque flags (0..255).")
    requestID = property(lambda self: self._requestID,
                         doc="The request this frame belongs to.")
    payload = property(lambda self: self._payload,
                       doc="The pickle, a contiguous bytes-like.")
    buffers = property(lambda self: self._buffers,
                       doc="(segment, offset, length) of each buffer.")

    def __repr__(self):
        return "Frame(kind={}, flags={}, requestID={}, payload=<{} bytes>, " \
            "buffers={!r})".format(self._kind, self._flags, self._requestID,
                                   len(self._payload), self._buffers)


class FrameWriter:
    """
    Writes frames into one growing output buffer that ``take`` empties.
    With an ``allocate`` function, pickled buffers of ``threshold`` bytes
    or more are copied there (shared memory) instead of into the payload;
    first, an ``adopt`` function may send such a buffer where it already
    lies: ``adopt(buffer)`` returns its ``(segment, offset)``, now lent, or
    None.
    """

    __slots__ = ("_output", "_threshold", "_allocate", "_release", "_adopt")

    def __init__(self, threshold=DEFAULT_THRESHOLD, allocate=None,
                 release=None, adopt=None):
        self._threshold = _checkRange(
            "threshold", threshold, 0, _UINT64_MAX)
        self._allocate = allocate
        self._release = release
        self._adopt = adopt
        self._output = bytearray()

    @property
    def threshold(self):
        """The smallest buffer (in bytes) placed out of band."""
        return self._threshold

    def __len__(self):
        return len(self._output)

    def write(self, kind, requestID, obj, flags=0, dumps=None):
        """
        Append a frame whose payload pickles ``obj`` with ``dumps``
        (default ``pickle.dumps``, protocol 5). Returns the list of
        ``(segment, offset, length)`` placed out of band, in pickle order.
        If pickling fails, the output is unchanged, every region allocated
        for this frame is released, and the exception propagates.
        """
        header = self._header(kind, requestID, flags)
        placer = _BufferPlacer(self._threshold, self._allocate, self._adopt)
        try:
            payload = (pickle.dumps if dumps is None else dumps)(
                obj, protocol=5, buffer_callback=placer)
            self._append(header, placer.descriptors, payload)
        except BaseException:
            placer.releaseAll(self._release)
            raise
        return placer.descriptors

    def writeBytes(self, kind, requestID, payload, flags=0):
        """Append a frame with a ready-made ``payload`` and no buffers."""
        self._append(self._header(kind, requestID, flags), (), payload)

    def redirect(self, segment, offset, newSegment, newOffset):
        """Point the pending frames' buffers at ``(segment, offset)`` to
        ``(newSegment, newOffset)`` instead; returns how many were."""
        output, position, count = self._output, 0, 0
        while position < len(output):
            header = _HEADER.unpack_from(output, position)
            position += _HEADER.size
            for _ in range(header[6]):
                fields = _DESCRIPTOR.unpack_from(output, position)
                if (fields[0], fields[2]) == (segment, offset):
                    _DESCRIPTOR.pack_into(output, position, newSegment, 0,
                                          newOffset, fields[3])
                    count += 1
                position += _DESCRIPTOR.size
            position += header[5]
        return count

    def take(self):
        """All the frames written since the last take, as bytes."""
        data = bytes(self._output)
        self._output = bytearray()
        return data

    @staticmethod
    def _header(kind, requestID, flags):
        """The checked (kind, flags, requestID) of a new frame."""
        return (_checkRange("kind", kind, 1, 255),
                _checkRange("flags", flags, 0, 255),
                _checkRange("requestID", requestID, 0, _UINT32_MAX))

    def _append(self, header, descriptors, payload):
        """Append one whole frame, or nothing if that fails."""
        kind, flags, requestID = header
        output = self._output
        start = len(output)
        with memoryview(payload) as view:
            try:
                output += _HEADER.pack(VERSION, kind, flags, 0, requestID,
                                       view.nbytes, len(descriptors))
                for segment, offset, length in descriptors:
                    output += _DESCRIPTOR.pack(segment, 0, offset, length)
                output += view
            except BaseException:
                del output[start:]
                raise


class _BufferPlacer:
    """
    The ``buffer_callback`` of one ``write``: copies each large contiguous
    buffer into a region from ``allocate`` and keeps it out of band.
    """

    __slots__ = ("threshold", "allocate", "adopt", "descriptors", "allocated")

    def __init__(self, threshold, allocate, adopt=None):
        self.threshold = threshold
        self.allocate = allocate
        self.adopt = adopt
        self.descriptors = []
        self.allocated = []

    def __call__(self, pickleBuffer):
        """False (out of band) when the buffer was placed, else True."""
        if self.allocate is None:
            return True
        try:
            raw = pickleBuffer.raw()
        except BufferError:
            return True
        nbytes = raw.nbytes
        if nbytes == 0 or nbytes < self.threshold:
            return True
        adopted = self.adopt(raw) if self.adopt is not None else None
        if adopted is not None:
            (segment, offset), target = adopted, None
        else:
            region = self.allocate(nbytes)
            if region is None:
                return True
            segment, offset, target = region
        self.allocated.append((segment, offset))
        segment = _checkRange("segment", segment, 0, _UINT32_MAX)
        offset = _checkRange("offset", offset, 0, _UINT64_MAX)
        if target is not None:
            with memoryview(target) as view:
                if view.nbytes != nbytes or view.readonly:
                    raise ValueError(
                        "allocate({}) must return a writable view of "
                        "exactly that many bytes, not {} bytes".format(
                            nbytes, view.nbytes))
                view.cast("B")[:] = raw
        self.descriptors.append((segment, offset, nbytes))
        return False

    def releaseAll(self, release):
        """Give back every allocated region, the latest first."""
        allocated, self.allocated = self.allocated, []
        if release is not None:
            for segment, offset in reversed(allocated):
                release(segment, offset)


class FrameReader:
    """
    Decodes frames from bytes fed in arbitrary chunks. Chunks are kept as
    they came, never re-copied; a payload lying in one chunk is a
    memoryview slice of it. Corrupt input raises ProtocolError, for good.
    """

    __slots__ = ("_chunks", "_position", "_length", "_maxPayload",
                 "_maxBuffers", "_header", "_error")

    def __init__(self, maxPayload=2**32, maxBuffers=4096):
        self._maxPayload = _checkRange("maxPayload", maxPayload, 0,
                                       _UINT64_MAX)
        self._maxBuffers = _checkRange("maxBuffers", maxBuffers, 0,
                                       _UINT32_MAX)
        self._chunks = deque()
        self._position = 0
        self._length = 0
        self._header = None
        self._error = None

    @property
    def maxPayload(self):
        """The longest payload accepted, in bytes."""
        return self._maxPayload

    @property
    def maxBuffers(self):
        """The most out-of-band buffers a frame may have."""
        return self._maxBuffers

    def __len__(self):
        return self._length

    def feed(self, data):
        """Keep a received chunk (any contiguous bytes-like), uncopied.
        After a ProtocolError, chunks are dropped."""
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        if view.nbytes and self._error is None:
            self._chunks.append(view)
            self._length += view.nbytes

    def next(self):
        """The next complete Frame, or None until one is buffered."""
        if self._error is not None:
            raise ProtocolError(self._error)
        if self._header is None:
            if self._length < HEADER_SIZE:
                return None
            self._header = self._parseHeader(self._peek(HEADER_SIZE))
        kind, flags, requestID, payloadLength, bufferCount, frameSize = \
            self._header
        if self._length < frameSize:
            return None
        self._skip(HEADER_SIZE)
        buffers = self._parseDescriptors(
            self._take(bufferCount * DESCRIPTOR_SIZE), bufferCount)
        payload = self._take(payloadLength)
        self._header = None
        return Frame(kind, flags, requestID, payload, buffers)

    # -- validation ------------------------------------------------------

    def _fail(self, message):
        self._error = message
        self._chunks.clear()
        self._length = self._position = 0
        raise ProtocolError(message)

    def _parseHeader(self, data):
        """The checked header fields and the size of the whole frame."""
        version, kind, flags, reserved, requestID, payloadLength, \
            bufferCount = _HEADER.unpack(data)
        if version != VERSION:
            self._fail("unsupported frame version {} (expected {})".format(
                version, VERSION))
        if kind == 0:
            self._fail("invalid frame kind 0")
        if reserved:
            self._fail("reserved header byte is {}, not 0".format(reserved))
        if payloadLength > self._maxPayload:
            self._fail("payload of {} bytes is over the limit of {}".format(
                payloadLength, self._maxPayload))
        if bufferCount > self._maxBuffers:
            self._fail("{} out-of-band buffers is over the limit of {}".format(
                bufferCount, self._maxBuffers))
        prefix = HEADER_SIZE + bufferCount * DESCRIPTOR_SIZE
        if payloadLength > _UINT64_MAX - prefix:
            self._fail("frame length overflows: payload of {} bytes".format(
                payloadLength))
        return (kind, flags, requestID, payloadLength, bufferCount,
                prefix + payloadLength)

    def _parseDescriptors(self, data, count):
        """The checked (segment, offset, length) tuples in ``data``."""
        buffers = []
        total = 0
        for segment, reserved, offset, length in _DESCRIPTOR.iter_unpack(data):
            if reserved:
                self._fail("reserved descriptor field is {}, not 0".format(
                    reserved))
            total += length
            if offset + length > _UINT64_MAX or total > _UINT64_MAX:
                self._fail("out-of-band buffer lengths overflow")
            buffers.append((segment, offset, length))
        return tuple(buffers)

    # -- the chunk cursor -------------------------------------------------

    def _peek(self, count):
        """The next ``count`` buffered bytes (at most a header), unconsumed."""
        first = self._chunks[0]
        end = self._position + count
        if end <= first.nbytes:
            return first[self._position:end]
        pieces = [first[self._position:]]
        needed = count - pieces[0].nbytes
        for chunk in islice(self._chunks, 1, None):
            pieces.append(chunk[:needed])
            needed -= pieces[-1].nbytes
            if needed == 0:
                break
        return b"".join(pieces)

    def _take(self, count):
        """
        Consume the next ``count`` bytes: a memoryview slice when they lie
        in one chunk, else one assembled bytes object (``b""`` for none).
        """
        if count == 0:
            return b""
        first = self._chunks[0]
        end = self._position + count
        if end <= first.nbytes:
            self._skip(count)
            return first[end - count:end]
        pieces = []
        while count:
            piece = self._chunks[0][self._position:self._position + count]
            pieces.append(piece)
            count -= piece.nbytes
            self._skip(piece.nbytes)
        return b"".join(pieces)

    def _skip(self, count):
        """Consume the next ``count`` bytes, dropping finished chunks."""
        self._length -= count
        position = self._position + count
        chunks = self._chunks
        while chunks and position >= chunks[0].nbytes:
            position -= chunks.popleft().nbytes
        self._position = position


def copyOut(view):
    """A private writable copy (a bytearray) of a contiguous buffer, in
    memory order."""
    try:
        raw = pickle.PickleBuffer(view).raw()
    except BufferError:
        raise BufferError(_COPY_OUT_ERROR) from None
    return bytearray(raw)
