# cython: language_level=3, boundscheck=False, wraparound=False
# cython: initializedcheck=False, cdivision=True
"""
Binary frames for the parent/child pipe of process workers, compiled: it
behaves exactly like its pure-Python twin ``asynqueue._speedups.pure.framing``
(whose docstring states the wire format) and writes the same bytes. Headers
are parsed in C and out-of-band buffers are copied with the GIL released.
"""
cimport cython
from cpython.buffer cimport (
    PyBUF_FULL_RO, PyBUF_SIMPLE, PyBuffer_IsContiguous,
    PyBuffer_Release, PyObject_GetBuffer)
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_FromStringAndSize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.memoryview cimport PyMemoryView_GET_BUFFER
from cpython.number cimport PyNumber_Index
from libc.stdint cimport UINT64_MAX
from libc.string cimport memcpy

import pickle
from collections import deque

cdef extern from "Python.h":
    const Py_ssize_t PY_SSIZE_T_MAX

__all__ = [
    "VERSION", "HEADER_SIZE", "DESCRIPTOR_SIZE", "DEFAULT_THRESHOLD",
    "ProtocolError", "Frame", "FrameWriter", "FrameReader", "copyOut",
]

cdef enum:
    WIRE_VERSION = 1
    HEADER_BYTES = 20
    DESCRIPTOR_BYTES = 24
    INITIAL_CAPACITY = 4096
    KEPT_CAPACITY = 1 << 20     # take() frees a larger output buffer

#: The wire format version every header carries.
VERSION = WIRE_VERSION
#: Bytes in a frame header.
HEADER_SIZE = HEADER_BYTES
#: Bytes in one out-of-band buffer descriptor.
DESCRIPTOR_SIZE = DESCRIPTOR_BYTES
#: Buffers this large (in bytes) or larger go out of band when they can.
DEFAULT_THRESHOLD = 65536

cdef uint32_t UINT32_LIMIT = 0xFFFFFFFF
cdef str RANGE_ERROR = "{} must be between {} and {}, not {!r}"
cdef str COPY_OUT_ERROR = "copyOut needs a C- or Fortran-contiguous buffer"
cdef str REGION_ERROR = (
    "allocate({}) must return a writable view of exactly that many bytes, "
    "not {} bytes")
cdef object pickleDumps = pickle.dumps
cdef object PickleBuffer = pickle.PickleBuffer


class ProtocolError(Exception):
    """
    The byte stream is not a valid sequence of frames. The reader that
    raised it stays broken: the peer must be disconnected.
    """


# ---------------------------------------------------------------------------
# Little-endian integers and checked arguments
# ---------------------------------------------------------------------------

cdef inline uint32_t loadUInt32(const unsigned char *p) noexcept nogil:
    return (<uint32_t>p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16)
            | (<uint32_t>p[3] << 24))


cdef inline uint64_t loadUInt64(const unsigned char *p) noexcept nogil:
    return <uint64_t>loadUInt32(p) | (<uint64_t>loadUInt32(p + 4) << 32)


cdef inline void storeUInt32(unsigned char *p, uint32_t value) noexcept nogil:
    p[0] = value & 0xFF
    p[1] = (value >> 8) & 0xFF
    p[2] = (value >> 16) & 0xFF
    p[3] = value >> 24


cdef inline void storeUInt64(unsigned char *p, uint64_t value) noexcept nogil:
    storeUInt32(p, <uint32_t>value)
    storeUInt32(p + 4, <uint32_t>(value >> 32))


cdef uint64_t checkRange(str what, object value, uint64_t low,
                         uint64_t high) except? 0:
    """``value`` as a C integer, or ValueError saying which value is bad."""
    cdef uint64_t number = 0
    cdef bint valid = True
    try:
        number = PyNumber_Index(value)
    except OverflowError:   # negative or over 64 bits
        valid = False
    if not valid or number < low or number > high:
        raise ValueError(RANGE_ERROR.format(what, low, high, value))
    return number


# ---------------------------------------------------------------------------
# Frame
# ---------------------------------------------------------------------------

@cython.freelist(16)
cdef class Frame:
    """
    One received frame: ``kind``, ``flags``, ``requestID``, the pickle
    ``payload`` (a contiguous bytes-like) and ``buffers``, a tuple of
    ``(segment, offset, length)`` of its out-of-band buffers.
    """

    def __init__(self, kind, flags, requestID, payload, buffers=()):
        self.kind = kind
        self.flags = flags
        self.requestID = requestID
        self.payload = payload
        self.buffers = tuple(buffers)

    def __repr__(self):
        return "Frame(kind={}, flags={}, requestID={}, payload=<{} bytes>, " \
            "buffers={!r})".format(self.kind, self.flags, self.requestID,
                                   len(self.payload), self.buffers)


# ---------------------------------------------------------------------------
# FrameWriter
# ---------------------------------------------------------------------------

cdef class FrameWriter:
    """
    Writes frames into one growing output buffer that ``take`` empties.
    With an ``allocate`` function, pickled buffers of ``threshold`` bytes
    or more are copied there (shared memory) instead of into the payload;
    first, an ``adopt`` function may send such a buffer where it already
    lies: ``adopt(buffer)`` returns its ``(segment, offset)``, now lent, or
    None.
    """

    def __init__(self, threshold=DEFAULT_THRESHOLD, allocate=None,
                 release=None, adopt=None):
        self.threshold = checkRange("threshold", threshold, 0, UINT64_MAX)
        self.allocate = allocate
        self.release = release
        self.adopt = adopt

    def __dealloc__(self):
        PyMem_Free(self.data)

    def __len__(self):
        return self.size

    def write(self, kind, requestID, obj, flags=0, dumps=None):
        """
        Append a frame whose payload pickles ``obj`` with ``dumps``
        (default ``pickle.dumps``, protocol 5). Returns the list of
        ``(segment, offset, length)`` placed out of band, in pickle order.
        If pickling fails, the output is unchanged, every region allocated
        for this frame is released, and the exception propagates.
        """
        cdef uint8_t kindValue = checkRange("kind", kind, 1, 255)
        cdef uint8_t flagsValue = checkRange("flags", flags, 0, 255)
        cdef uint32_t requestValue = checkRange(
            "requestID", requestID, 0, UINT32_LIMIT)
        cdef _BufferPlacer placer = _BufferPlacer.__new__(_BufferPlacer)
        placer.threshold = self.threshold
        placer.allocate = self.allocate
        placer.adopt = self.adopt
        placer.descriptors = []
        placer.allocated = []
        try:
            payload = (pickleDumps if dumps is None else dumps)(
                obj, protocol=5, buffer_callback=placer)
            self.appendFrame(kindValue, flagsValue, requestValue, payload,
                             placer.descriptors)
        except BaseException:
            placer.releaseAll(self.release)
            raise
        return placer.descriptors

    def writeBytes(self, kind, requestID, payload, flags=0):
        """Append a frame with a ready-made ``payload`` and no buffers."""
        cdef uint8_t kindValue = checkRange("kind", kind, 1, 255)
        cdef uint8_t flagsValue = checkRange("flags", flags, 0, 255)
        cdef uint32_t requestValue = checkRange(
            "requestID", requestID, 0, UINT32_LIMIT)
        self.appendFrame(kindValue, flagsValue, requestValue, payload, [])

    def redirect(self, segment, offset, newSegment, newOffset):
        """Point the pending frames' buffers at ``(segment, offset)`` to
        ``(newSegment, newOffset)`` instead; returns how many were."""
        cdef uint32_t fromSegment = checkRange(
            "segment", segment, 0, UINT32_LIMIT)
        cdef uint64_t fromOffset = checkRange("offset", offset, 0, UINT64_MAX)
        cdef uint32_t toSegment = checkRange(
            "newSegment", newSegment, 0, UINT32_LIMIT)
        cdef uint64_t toOffset = checkRange(
            "newOffset", newOffset, 0, UINT64_MAX)
        cdef Py_ssize_t position = 0, replaced = 0
        cdef uint64_t payload
        cdef uint32_t count, i
        cdef unsigned char *p
        while position < self.size:
            p = self.data + position
            payload = loadUInt64(p + 8)
            count = loadUInt32(p + 16)
            position += HEADER_BYTES
            for i in range(count):
                p = self.data + position
                if loadUInt32(p) == fromSegment and \
                        loadUInt64(p + 8) == fromOffset:
                    storeUInt32(p, toSegment)
                    storeUInt64(p + 8, toOffset)
                    replaced += 1
                position += DESCRIPTOR_BYTES
            position += <Py_ssize_t>payload
        return replaced

    def take(self):
        """All the frames written since the last take, as bytes."""
        data = PyBytes_FromStringAndSize(<char *>self.data, self.size)
        self.size = 0
        if self.capacity > KEPT_CAPACITY:
            PyMem_Free(self.data)
            self.data = NULL
            self.capacity = 0
        return data

    cdef int reserve(self, Py_ssize_t extra) except -1:
        """Make room for ``extra`` more bytes after the pending ones."""
        cdef Py_ssize_t capacity
        cdef unsigned char *data
        if extra <= self.capacity - self.size:
            return 0
        if extra > PY_SSIZE_T_MAX // 2 - self.size:
            raise MemoryError("a frame of {} bytes is too large".format(extra))
        capacity = max(2 * self.capacity, self.size + extra, INITIAL_CAPACITY)
        data = <unsigned char *>PyMem_Realloc(self.data, capacity)
        if data == NULL:
            raise MemoryError()
        self.data = data
        self.capacity = capacity
        return 0

    cdef int appendFrame(self, uint8_t kind, uint8_t flags, uint32_t requestID,
                         object payload, list descriptors) except -1:
        """Append one whole frame, or nothing if that fails."""
        cdef Py_buffer view
        cdef Py_ssize_t count = len(descriptors), total
        cdef unsigned char *out
        PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
        try:
            total = HEADER_BYTES + count * DESCRIPTOR_BYTES
            if view.len > PY_SSIZE_T_MAX // 2 - total:
                raise MemoryError("a payload of {} bytes is too large".format(
                    view.len))
            total += view.len
            self.reserve(total)
            out = self.data + self.size
            out[0] = WIRE_VERSION
            out[1] = kind
            out[2] = flags
            out[3] = 0
            storeUInt32(out + 4, requestID)
            storeUInt64(out + 8, <uint64_t>view.len)
            storeUInt32(out + 16, <uint32_t>count)
            out += HEADER_BYTES
            for segment, offset, length in descriptors:
                storeUInt32(out, <uint32_t>segment)
                storeUInt32(out + 4, 0)
                storeUInt64(out + 8, <uint64_t>offset)
                storeUInt64(out + 16, <uint64_t>length)
                out += DESCRIPTOR_BYTES
            memcpy(out, view.buf, view.len)
            self.size += total
        finally:
            PyBuffer_Release(&view)
        return 0


@cython.final
cdef class _BufferPlacer:
    """
    The ``buffer_callback`` of one ``write``: copies each large contiguous
    buffer into a region from ``allocate`` and keeps it out of band.
    """

    def __call__(self, pickleBuffer):
        """False (out of band) when the buffer was placed, else True."""
        cdef Py_buffer source
        if self.allocate is None:
            return True
        try:
            raw = pickleBuffer.raw()
        except BufferError:
            return True
        PyObject_GetBuffer(raw, &source, PyBUF_SIMPLE)
        try:
            return placeBuffer(self, &source, raw)
        finally:
            PyBuffer_Release(&source)

    cdef int releaseAll(self, object release) except -1:
        """Give back every allocated region, the latest first."""
        allocated, self.allocated = self.allocated, []
        if release is not None:
            for segment, offset in reversed(allocated):
                release(segment, offset)
        return 0


cdef bint placeBuffer(_BufferPlacer placer, Py_buffer *source,
                      object raw) except -1:
    """Send ``source`` (the buffer of ``raw``) where it lies, or copy it
    into a new region, or tell that it stays in band."""
    cdef Py_buffer target
    cdef Py_ssize_t nbytes = source.len
    if nbytes == 0 or <uint64_t>nbytes < placer.threshold:
        return True
    adopted = placer.adopt(raw) if placer.adopt is not None else None
    if adopted is not None:
        (segment, offset), targetObject = adopted, None
    else:
        region = placer.allocate(nbytes)
        if region is None:
            return True
        segment, offset, targetObject = region
    placer.allocated.append((segment, offset))
    segment = checkRange("segment", segment, 0, UINT32_LIMIT)
    offset = checkRange("offset", offset, 0, UINT64_MAX)
    if targetObject is not None:
        PyObject_GetBuffer(targetObject, &target, PyBUF_SIMPLE)
        try:
            if target.len != nbytes or target.readonly:
                raise ValueError(REGION_ERROR.format(nbytes, target.len))
            with nogil:
                memcpy(target.buf, source.buf, nbytes)
        finally:
            PyBuffer_Release(&target)
    placer.descriptors.append((segment, offset, nbytes))
    return False


# ---------------------------------------------------------------------------
# FrameReader
# ---------------------------------------------------------------------------

cdef class FrameReader:
    """
    Decodes frames from bytes fed in arbitrary chunks. Chunks are kept as
    they came, never re-copied; a payload lying in one chunk is a
    memoryview slice of it. Corrupt input raises ProtocolError, for good.
    """

    def __init__(self, maxPayload=2**32, maxBuffers=4096):
        self.maxPayload = checkRange("maxPayload", maxPayload, 0, UINT64_MAX)
        self.maxBuffers = checkRange("maxBuffers", maxBuffers, 0, UINT32_LIMIT)
        self.chunks = deque()
        self.first = None

    def __len__(self):
        return self.length

    def feed(self, data):
        """Keep a received chunk (any contiguous bytes-like), uncopied.
        After a ProtocolError, chunks are dropped."""
        cdef Py_ssize_t size
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        size = PyMemoryView_GET_BUFFER(view).len
        if size and self.error is None:
            self.chunks.append(view)
            self.length += size
            if self.first is None:
                self.selectFirst()

    def next(self):
        """The next complete Frame, or None until one is buffered."""
        cdef unsigned char header[HEADER_BYTES]
        cdef Frame frame
        if self.error is not None:
            raise ProtocolError(self.error)
        if not self.haveHeader:
            if self.length < HEADER_BYTES:
                return None
            if self.position + HEADER_BYTES <= self.currentSize:
                self.parseHeader(self.current + self.position)
            else:
                self.peekInto(header, HEADER_BYTES)
                self.parseHeader(header)
        if <uint64_t>self.length < self.header.frameSize:
            return None
        self.skip(HEADER_BYTES)
        frame = Frame.__new__(Frame)
        frame.buffers = self.takeDescriptors(self.header.bufferCount)
        frame.payload = self.take(<Py_ssize_t>self.header.payloadLength)
        frame.kind = self.header.kind
        frame.flags = self.header.flags
        frame.requestID = self.header.requestID
        self.haveHeader = False
        return frame

    # -- validation ------------------------------------------------------

    cdef int fail(self, str message) except -1:
        self.error = message
        self.chunks.clear()
        self.selectFirst()
        self.length = self.position = 0
        raise ProtocolError(message)

    cdef int parseHeader(self, const unsigned char *data) except -1:
        """Check the header at ``data`` and keep it, with the frame size."""
        cdef FrameHeader *header = &self.header
        cdef uint64_t prefix
        header.kind = data[1]
        header.flags = data[2]
        header.requestID = loadUInt32(data + 4)
        header.payloadLength = loadUInt64(data + 8)
        header.bufferCount = loadUInt32(data + 16)
        if data[0] != WIRE_VERSION:
            self.fail("unsupported frame version {} (expected {})".format(
                data[0], WIRE_VERSION))
        if header.kind == 0:
            self.fail("invalid frame kind 0")
        if data[3]:
            self.fail("reserved header byte is {}, not 0".format(data[3]))
        if header.payloadLength > self.maxPayload:
            self.fail("payload of {} bytes is over the limit of {}".format(
                header.payloadLength, self.maxPayload))
        if header.bufferCount > self.maxBuffers:
            self.fail("{} out-of-band buffers is over the limit of {}".format(
                header.bufferCount, self.maxBuffers))
        prefix = HEADER_BYTES + <uint64_t>header.bufferCount * DESCRIPTOR_BYTES
        if header.payloadLength > UINT64_MAX - prefix:
            self.fail("frame length overflows: payload of {} bytes".format(
                header.payloadLength))
        header.frameSize = prefix + header.payloadLength
        self.haveHeader = True
        return 0

    cdef tuple takeDescriptors(self, uint32_t count):
        """Consume and check ``count`` descriptors."""
        cdef unsigned char copy[DESCRIPTOR_BYTES]
        cdef const unsigned char *data
        cdef uint32_t segment, reserved, index
        cdef uint64_t offset, length, total = 0
        result = []
        for index in range(count):
            # Decode before skipping: the skip may free the chunk.
            if self.position + DESCRIPTOR_BYTES <= self.currentSize:
                data = self.current + self.position
            else:
                self.peekInto(copy, DESCRIPTOR_BYTES)
                data = copy
            segment = loadUInt32(data)
            reserved = loadUInt32(data + 4)
            offset = loadUInt64(data + 8)
            length = loadUInt64(data + 16)
            self.skip(DESCRIPTOR_BYTES)
            if reserved:
                self.fail("reserved descriptor field is {}, not 0".format(
                    reserved))
            if length > UINT64_MAX - offset or length > UINT64_MAX - total:
                self.fail("out-of-band buffer lengths overflow")
            total += length
            result.append((segment, offset, length))
        return tuple(result)

    # -- the chunk cursor -------------------------------------------------

    cdef object take(self, Py_ssize_t count):
        """
        Consume the next ``count`` bytes: a memoryview slice when they lie
        in one chunk, else one assembled bytes object (``b""`` for none).
        """
        cdef Py_ssize_t start = self.position
        if count == 0:
            return b""
        if start + count <= self.currentSize:
            chunk = self.first
            self.skip(count)
            return chunk[start:start + count]
        result = PyBytes_FromStringAndSize(NULL, count)
        self.readInto(<unsigned char *>PyBytes_AS_STRING(result), count)
        return result

    cdef int peekInto(self, unsigned char *target, Py_ssize_t count) except -1:
        """Copy the next ``count`` buffered bytes, without consuming them."""
        cdef Py_ssize_t start = self.position, step
        cdef Py_buffer *view
        for chunk in self.chunks:
            view = PyMemoryView_GET_BUFFER(chunk)
            step = min(count, view.len - start)
            memcpy(target, <const unsigned char *>view.buf + start, step)
            target += step
            count -= step
            start = 0
            if count == 0:
                break
        return 0

    cdef int readInto(self, unsigned char *target, Py_ssize_t count) except -1:
        """Copy and consume the next ``count`` bytes."""
        cdef Py_ssize_t step
        while count:
            step = min(count, self.currentSize - self.position)
            memcpy(target, self.current + self.position, step)
            self.skip(step)
            target += step
            count -= step
        return 0

    cdef int skip(self, Py_ssize_t count) except -1:
        """Consume the next ``count`` bytes, dropping finished chunks."""
        self.length -= count
        self.position += count
        while self.first is not None and self.position >= self.currentSize:
            self.position -= self.currentSize
            self.chunks.popleft()
            self.selectFirst()
        return 0

    cdef int selectFirst(self) except -1:
        """Point ``current`` at the data of the first chunk, if any."""
        cdef Py_buffer *view
        if self.chunks:
            self.first = self.chunks[0]
            view = PyMemoryView_GET_BUFFER(self.first)
            self.current = <const unsigned char *>view.buf
            self.currentSize = view.len
        else:
            self.first = None
            self.current = NULL
            self.currentSize = 0
        return 0


# ---------------------------------------------------------------------------
# copyOut
# ---------------------------------------------------------------------------

def copyOut(view):
    """A private writable copy (a bytearray) of a contiguous buffer, in
    memory order."""
    cdef Py_buffer source
    cdef char *target
    PyObject_GetBuffer(view, &source, PyBUF_FULL_RO)
    try:
        if not PyBuffer_IsContiguous(&source, b"A"):
            raise BufferError(COPY_OUT_ERROR)
        result = PyByteArray_FromStringAndSize(NULL, source.len)
        target = PyByteArray_AS_STRING(result)
        with nogil:
            memcpy(target, source.buf, source.len)
    finally:
        PyBuffer_Release(&source)
    return result
