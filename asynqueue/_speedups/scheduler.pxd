"""
Declarations of the compiled scheduler, so that other compiled modules can
cimport its classes and reach their C-level fields and methods.
"""
from cpython.object cimport PyObject


cdef struct HeapEntry:
    double number               # the numeric key; 0.0 for the sentinel
    unsigned long long serial   # push count: first-in, first-out on ties
    unsigned char rank          # 1 for the shutdown sentinel None, else 0
    unsigned char keyIsItem     # the key is the item itself (a Python object)


cdef struct SortRecord:
    HeapEntry entry
    PyObject *item              # borrowed from the heap's item list


cdef class PriorityHeap:
    cdef HeapEntry *entries     # C array in heap order, parallel to entryItems
    cdef list entryItems        # the items in the same order (owns them, GC sees them)
    cdef Py_ssize_t size
    cdef Py_ssize_t capacity
    cdef Py_ssize_t objectKeys  # entries whose key is a Python object
    cdef unsigned long long nextSerial
    cdef bint busy              # a comparison or selector is running

    cdef int pushNumber(self, object item, double number) except -1
    cdef int pushObject(self, object item) except -1
    cdef object popItem(self)
    cdef int pushEntry(self, object item, HeapEntry entry) except -1
    cdef int siftPushed(self, unsigned long long serial) except -1
    cdef int siftRoot(self) except -1
    cdef int discard(self, unsigned long long serial) except -1
    cdef list cancelSelected(self, object selector)
    cdef list sortedItems(self)
    cdef int checkIdle(self) except -1
    cdef int reserve(self, Py_ssize_t capacity) except -1
    cdef void shrink(self) noexcept


cdef class SeriesPrioritizer:
    cdef public object seriesNumbers
    cdef object highest         # the highest serial handed out (a Python int)

    cdef object nextNumber(self, object series)
