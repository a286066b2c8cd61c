"""
Declarations of the compiled frame codec, so that other compiled modules can
cimport its classes and reach their C-level fields and methods.
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t


cdef struct FrameHeader:
    uint8_t kind
    uint8_t flags
    uint32_t requestID
    uint64_t payloadLength
    uint32_t bufferCount
    uint64_t frameSize          # header + descriptors + payload, in bytes


cdef class Frame:
    cdef readonly object kind
    cdef readonly object flags
    cdef readonly object requestID
    cdef readonly object payload    # a memoryview slice or bytes
    cdef readonly tuple buffers     # (segment, offset, length) tuples


cdef class FrameWriter:
    cdef unsigned char *data        # the frames written since the last take
    cdef Py_ssize_t size            # bytes pending in data
    cdef Py_ssize_t capacity        # bytes allocated for data
    cdef readonly uint64_t threshold
    cdef object allocate
    cdef object release
    cdef object adopt

    cdef int reserve(self, Py_ssize_t extra) except -1
    cdef int appendFrame(self, uint8_t kind, uint8_t flags, uint32_t requestID,
                         object payload, list descriptors) except -1


cdef class _BufferPlacer:
    cdef uint64_t threshold
    cdef object allocate
    cdef object adopt
    cdef list descriptors           # (segment, offset, length), pickle order
    cdef list allocated             # (segment, offset) to give back on failure

    cdef int releaseAll(self, object release) except -1


cdef class FrameReader:
    cdef object chunks              # deque of the fed 1-D byte memoryviews
    cdef object first               # chunks[0], or None
    cdef const unsigned char *current   # the data of first
    cdef Py_ssize_t currentSize     # its length
    cdef Py_ssize_t position        # bytes of first already consumed
    cdef Py_ssize_t length          # bytes buffered and not consumed
    cdef readonly uint64_t maxPayload
    cdef readonly uint32_t maxBuffers
    cdef bint haveHeader            # header holds the next frame's header
    cdef FrameHeader header
    cdef str error                  # the ProtocolError message, once broken

    cdef int fail(self, str message) except -1
    cdef int parseHeader(self, const unsigned char *data) except -1
    cdef tuple takeDescriptors(self, uint32_t count)
    cdef object take(self, Py_ssize_t count)
    cdef int peekInto(self, unsigned char *target, Py_ssize_t count) except -1
    cdef int readInto(self, unsigned char *target, Py_ssize_t count) except -1
    cdef int skip(self, Py_ssize_t count) except -1
    cdef int selectFirst(self) except -1
