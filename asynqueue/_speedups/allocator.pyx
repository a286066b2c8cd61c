# cython: language_level=3
"""
A numpy memory handler (NEP 49) for a process worker's child: large arrays
that a call creates are born in the child's reply arena, so that a result
goes back to the parent in place, with neither a copy nor the page faults
of fresh memory.

Arrays of ``threshold`` bytes or more get a region from ``allocate`` (a
Python function, called with the GIL); smaller ones, and any that do not
fit, get plain ``malloc``. When numpy frees an arena array the handler sets
the second byte of its region's header, so the arena knows its owner is
done with it; nothing else happens without the GIL. Only the process that
installed the handler allocates from the arena (a forked copy uses
``malloc``, and never marks a region free).

Importing this module imports numpy: the child imports it once a call has.
"""
from cpython.exc cimport PyErr_Fetch, PyErr_Restore
from cpython.object cimport PyObject
from cpython.pycapsule cimport PyCapsule_New
from libc.stdint cimport uint8_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy, memset, strncpy
from posix.types cimport pid_t
from posix.unistd cimport getpid

cdef extern from "Python.h":
    ctypedef struct Py_buffer:
        void *buf
    int PyObject_GetBuffer(object, Py_buffer *, int) except -1
    void PyBuffer_Release(Py_buffer *)
    int PyBUF_SIMPLE

cdef extern from *:
    """
    #define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
    """

cdef extern from "numpy/arrayobject.h":
    ctypedef void *(*MallocFunction)(void *, size_t) noexcept nogil
    ctypedef void *(*CallocFunction)(void *, size_t, size_t) noexcept nogil
    ctypedef void *(*ReallocFunction)(void *, void *, size_t) noexcept nogil
    ctypedef void (*FreeFunction)(void *, void *, size_t) noexcept nogil
    ctypedef struct PyDataMemAllocator:
        void *ctx
        MallocFunction malloc
        CallocFunction calloc
        ReallocFunction realloc
        FreeFunction free
    ctypedef struct PyDataMem_Handler:
        char name[127]
        uint8_t version
        PyDataMemAllocator allocator
    object PyDataMem_SetHandler(object handler)
    int _import_array() except -1

_import_array()

cdef enum:
    #: Arena mappings the handler recognises at most.
    MAX_AREAS = 32
    #: The header byte numpy's free sets (the first is the borrower's).
    OWNER_DONE = 1
    #: Where the header keeps an owned region's size in bytes (for realloc).
    SIZE_AT = 8

cdef uintptr_t areaStarts[MAX_AREAS]
cdef uintptr_t areaEnds[MAX_AREAS]
cdef int areaCount = 0
cdef object allocateInArena = None
cdef size_t threshold = 1 << 20
cdef size_t headerBytes = 64
cdef pid_t ownerPID = 0
cdef PyDataMem_Handler handler
cdef object capsule = None
cdef object previous = None


cdef inline bint inArena(void *pointer) noexcept nogil:
    cdef uintptr_t address = <uintptr_t>pointer
    cdef int i
    for i in range(areaCount):
        if areaStarts[i] <= address < areaEnds[i]:
            return True
    return False


cdef void *arenaMalloc(size_t size) noexcept nogil:
    """A region of the arena, or NULL (not the owner, no room, an error)."""
    cdef uintptr_t address = 0
    cdef PyObject *kind
    cdef PyObject *value
    cdef PyObject *traceback
    if size < threshold or getpid() != ownerPID:
        return NULL
    with gil:
        if allocateInArena is None:
            return NULL
        PyErr_Fetch(&kind, &value, &traceback)
        try:
            address = allocateInArena(size)
        except BaseException:
            address = 0
        PyErr_Restore(kind, value, traceback)
    return <void *>address


cdef void *handlerMalloc(void *ctx, size_t size) noexcept nogil:
    cdef void *pointer = arenaMalloc(size)
    return pointer if pointer != NULL else malloc(size)


cdef void *handlerCalloc(void *ctx, size_t count, size_t size) noexcept nogil:
    cdef void *pointer
    if size and count > <size_t>-1 // size:
        return NULL
    pointer = arenaMalloc(count * size)
    if pointer == NULL:
        return calloc(count, size)
    memset(pointer, 0, count * size)
    return pointer


cdef void handlerFree(void *ctx, void *pointer, size_t size) noexcept nogil:
    if pointer != NULL and inArena(pointer):
        if getpid() == ownerPID:
            (<uint8_t *>pointer - headerBytes)[OWNER_DONE] = 1
        return
    free(pointer)


cdef void *handlerRealloc(void *ctx, void *pointer, size_t size) noexcept nogil:
    cdef void *moved
    cdef uint64_t old
    if pointer == NULL or not inArena(pointer):
        return realloc(pointer, size)
    memcpy(&old, <uint8_t *>pointer - headerBytes + SIZE_AT, sizeof(old))
    moved = handlerMalloc(ctx, size)
    if moved != NULL:
        memcpy(moved, pointer, min(<size_t>old, size))
        handlerFree(ctx, pointer, old)
    return moved


def install(allocate, size_t minimum=1 << 20, size_t header=64):
    """
    Make numpy, in this thread's context, take arrays of ``minimum`` bytes
    or more from ``allocate(nbytes)``: the address of a region (whose
    header of ``header`` bytes keeps its size at byte 8, see
    ``ReplyArenaWriter``), or 0 to use ``malloc``. Installing again only
    changes the function and sizes.
    """
    global allocateInArena, threshold, headerBytes, ownerPID, capsule
    global previous
    allocateInArena = allocate
    threshold = minimum if minimum else 1
    headerBytes = header
    ownerPID = getpid()
    if capsule is None:
        strncpy(handler.name, b"asynqueue_arena", 127)
        handler.version = 1
        handler.allocator.ctx = NULL
        handler.allocator.malloc = handlerMalloc
        handler.allocator.calloc = handlerCalloc
        handler.allocator.realloc = handlerRealloc
        handler.allocator.free = handlerFree
        capsule = PyCapsule_New(&handler, b"mem_handler", NULL)
        previous = PyDataMem_SetHandler(capsule)


def uninstall():
    """Give this context numpy's previous handler back; arrays already in
    an arena are still freed through this module."""
    global allocateInArena, capsule, previous
    allocateInArena = None
    if capsule is not None:
        PyDataMem_SetHandler(previous)
        capsule = previous = None


def installed():
    """True while new arrays may be born in an arena."""
    return capsule is not None and allocateInArena is not None


def addArea(buffer):
    """Recognise the mapping of ``buffer`` as an arena; returns its
    address."""
    global areaCount
    cdef uintptr_t start = addressOf(buffer)
    if areaCount == MAX_AREAS:
        raise RuntimeError("more than {} arenas".format(MAX_AREAS))
    areaStarts[areaCount] = start
    areaEnds[areaCount] = start + len(buffer)
    areaCount += 1
    return start


def removeArea(uintptr_t start):
    """Forget the arena at ``start``, about to be unmapped."""
    global areaCount
    cdef int i, j
    for i in range(areaCount):
        if areaStarts[i] == start:
            for j in range(i, areaCount - 1):
                areaStarts[j] = areaStarts[j + 1]
                areaEnds[j] = areaEnds[j + 1]
            areaCount -= 1
            return


def addressOf(buffer):
    """The address of the first byte of ``buffer``."""
    cdef Py_buffer view
    PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE)
    try:
        return <uintptr_t>view.buf
    finally:
        PyBuffer_Release(&view)
