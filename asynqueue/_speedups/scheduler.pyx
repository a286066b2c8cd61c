# cython: language_level=3, boundscheck=False, wraparound=False
# cython: initializedcheck=False, cdivision=True
"""
Priority scheduling for asynqueue, compiled: the heap behind ``base.Priority``
and the priority arithmetic of ``tasks.TaskFactory``. It behaves exactly like
its pure-Python twin ``asynqueue._speedups.pure.scheduler`` (whose docstring
states the ordering contract) but keeps numeric keys as C doubles and compares
them in C.
"""
cimport cython
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_CheckExact
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.long cimport PyLong_AsDouble, PyLong_AsLongAndOverflow, PyLong_CheckExact
from cpython.dict cimport PyDict_GetItemWithError, PyDict_SetItem
from cpython.number cimport PyNumber_Float
from cpython.object cimport PyObject, Py_EQ, Py_LT
from cpython.ref cimport Py_INCREF
from cpython.sequence cimport PySequence_Fast_ITEMS
from libc.stdlib cimport free, malloc, qsort, realloc

cdef extern from "Python.h":
    # Declared on raw pointers so that comparing two keys costs no refcounting.
    int richCompareBool "PyObject_RichCompareBool" (
        PyObject *first, PyObject *second, int operation) except -1
    const Py_ssize_t PY_SSIZE_T_MAX

__all__ = [
    "PriorityHeap", "SeriesPrioritizer", "checkNiceness", "taskPriority",
    "RUSH_PRIORITY", "RELAX_PRIORITY", "NICENESS_ERROR",
]

#: The priority of a task that must run next (``Task.rush``, ``doNext``).
RUSH_PRIORITY = -1000000
#: The priority of a task that must run last (``Task.relax``, ``doLast``).
RELAX_PRIORITY = 1000000
#: The message of the ValueError raised for a bad niceness.
NICENESS_ERROR = "Niceness must be an integer between -20 and +20"

cdef str NAN_PRIORITY_ERROR = "Priority must be a number, not NaN"
cdef str BUSY_ERROR = (
    "A PriorityHeap cannot be changed from inside one of its own key "
    "comparisons or cancel selectors")
cdef str EMPTY_POP_ERROR = "pop from an empty PriorityHeap"
cdef str EMPTY_PEEK_ERROR = "peek at an empty PriorityHeap"

cdef enum:
    MINIMUM_CAPACITY = 16


# ---------------------------------------------------------------------------
# Comparing entries: the tuple rule on (rank, key, serial)
# ---------------------------------------------------------------------------

cdef inline int entryLess(const HeapEntry *a, PyObject *aItem,
                          const HeapEntry *b, PyObject *bItem) except -1:
    """Whether entry ``a`` sorts before ``b``; numeric keys never leave C."""
    if a.rank != b.rank:
        return a.rank < b.rank
    if a.keyIsItem or b.keyIsItem:
        return objectKeyLess(a, aItem, b, bItem)
    if a.number != b.number:
        return a.number < b.number
    return a.serial < b.serial


cdef int objectKeyLess(const HeapEntry *a, PyObject *aItem,
                       const HeapEntry *b, PyObject *bItem) except -1:
    """The tuple rule with Python keys: the first unequal key decides."""
    cdef object aKey = keyOf(a, aItem)
    cdef object bKey = keyOf(b, bItem)
    if richCompareBool(<PyObject *>aKey, <PyObject *>bKey, Py_EQ):
        return a.serial < b.serial
    return richCompareBool(<PyObject *>aKey, <PyObject *>bKey, Py_LT)


cdef inline object keyOf(const HeapEntry *entry, PyObject *item):
    """The key as a Python object: the item itself, or the number as a float."""
    if entry.keyIsItem:
        return <object>item
    return entry.number


cdef int compareRecords(const void *first, const void *second) noexcept nogil:
    """qsort order of records whose keys are all numbers."""
    cdef const HeapEntry *a = &(<const SortRecord *>first).entry
    cdef const HeapEntry *b = &(<const SortRecord *>second).entry
    if a.rank != b.rank:
        return -1 if a.rank < b.rank else 1
    if a.number != b.number:
        return -1 if a.number < b.number else 1
    return -1 if a.serial < b.serial else (a.serial > b.serial)


# ---------------------------------------------------------------------------
# heapq's algorithms on the parallel arrays, comparison for comparison
# ---------------------------------------------------------------------------
# The entries and their items are swapped together, so that both stay a
# permutation of the heap at every step (as in heapq): an exception or a
# garbage collection in the middle of a sift finds everything in place.

cdef inline void swapEntries(HeapEntry *entries, PyObject **items,
                             Py_ssize_t i, Py_ssize_t j) noexcept nogil:
    cdef HeapEntry entry = entries[i]
    cdef PyObject *item = items[i]
    entries[i] = entries[j]
    items[i] = items[j]
    entries[j] = entry
    items[j] = item


cdef int siftDown(HeapEntry *entries, PyObject **items,
                  Py_ssize_t start, Py_ssize_t position) except -1:
    """heapq's ``_siftdown``: move the entry at ``position`` up towards
    ``start`` while it sorts before its parent."""
    cdef Py_ssize_t parent
    while position > start:
        parent = (position - 1) >> 1
        if not entryLess(&entries[position], items[position],
                         &entries[parent], items[parent]):
            break
        swapEntries(entries, items, position, parent)
        position = parent
    return 0


cdef int siftUp(HeapEntry *entries, PyObject **items,
                Py_ssize_t size, Py_ssize_t position) except -1:
    """heapq's ``_siftup``: move the smaller child up until reaching a leaf,
    then sift the entry that started at ``position`` back down."""
    cdef Py_ssize_t start = position, child, limit = size >> 1
    while position < limit:
        child = 2 * position + 1
        if child + 1 < size and not entryLess(
                &entries[child], items[child],
                &entries[child + 1], items[child + 1]):
            child += 1
        swapEntries(entries, items, position, child)
        position = child
    return siftDown(entries, items, start, position)


cdef int heapify(HeapEntry *entries, PyObject **items,
                 Py_ssize_t size) except -1:
    """heapq's ``heapify``."""
    cdef Py_ssize_t position = (size >> 1) - 1
    while position >= 0:
        siftUp(entries, items, size, position)
        position -= 1
    return 0


cdef list itemsInPopOrder(SortRecord *records, Py_ssize_t count,
                          bint objectKeys):
    """
    The items of ``records`` sorted like the pure twin's entry tuples: in C
    when every key is a number, else by sorting the very same tuples.
    """
    cdef Py_ssize_t index
    cdef list result
    if objectKeys:
        decorated = [
            (records[index].entry.rank,
             keyOf(&records[index].entry, records[index].item),
             records[index].entry.serial, <object>records[index].item)
            for index in range(count)]
        decorated.sort()
        return [entry[3] for entry in decorated]
    qsort(records, count, sizeof(SortRecord), compareRecords)
    result = PyList_New(count)
    for index in range(count):
        Py_INCREF(<object>records[index].item)
        PyList_SET_ITEM(result, index, <object>records[index].item)
    return result


cdef inline PyObject **itemArray(list items):
    return PySequence_Fast_ITEMS(items)


# ---------------------------------------------------------------------------
# PriorityHeap
# ---------------------------------------------------------------------------

@cython.no_gc_clear
cdef class PriorityHeap:
    """
    A min-heap of items with O(log n) push and pop, first-in, first-out
    among equal keys, and removal of every item a predicate selects.
    """

    def __cinit__(self, *args, **kwargs):
        # Extra arguments are left to __init__, so Python subclasses may
        # define their own constructor.
        self.entryItems = []

    def __init__(self):
        pass

    def __dealloc__(self):
        free(self.entries)

    def __len__(self):
        return self.size

    def __bool__(self):
        return self.size != 0

    def push(self, item, priority=None):
        """
        Add ``item`` keyed by the number ``priority``, or by the item itself
        when no priority is given (``None`` then sorts after everything).
        A NaN priority raises ValueError. If the key cannot be compared with
        the others, the TypeError propagates and the heap is left as it was.
        """
        if priority is None:
            self.pushObject(item)
        elif PyFloat_CheckExact(priority):
            self.pushNumber(item, PyFloat_AS_DOUBLE(priority))
        elif PyLong_CheckExact(priority):
            self.pushNumber(item, PyLong_AsDouble(priority))
        else:
            self.pushNumber(item, PyFloat_AS_DOUBLE(PyNumber_Float(priority)))

    def pop(self):
        """Remove and return the item with the lowest key."""
        if self.size == 0:
            raise IndexError(EMPTY_POP_ERROR)
        return self.popItem()

    def peek(self):
        """Return the item with the lowest key without removing it."""
        if self.size == 0:
            raise IndexError(EMPTY_PEEK_ERROR)
        return self.entryItems[0]

    def cancel(self, selector):
        """
        Remove every item for which ``selector(item)`` is true and return
        them in the order they would have popped. If the selector (or a key
        comparison) raises, the exception propagates and the heap is left as
        it was.
        """
        self.checkIdle()
        self.busy = True
        try:
            return self.cancelSelected(selector)
        finally:
            self.busy = False

    def items(self):
        """A list of the items in the order they would pop."""
        return self.sortedItems()

    def clear(self):
        """Remove every item and return them in the order they would pop."""
        self.checkIdle()
        items = self.sortedItems()  # holds every item while the list goes
        self.size = self.objectKeys = 0
        free(self.entries)
        self.entries = NULL
        self.capacity = 0
        self.entryItems = []
        return items

    def __reduce__(self):
        """Pickle as the entries in heap order and the next serial."""
        cdef Py_ssize_t index
        cdef HeapEntry *entry
        entries = []
        for index in range(self.size):
            entry = &self.entries[index]
            entries.append((entry.rank, entry.number, entry.serial,
                            entry.keyIsItem, self.entryItems[index]))
        return (type(self), (), (self.nextSerial, entries))

    def __setstate__(self, state):
        cdef HeapEntry entry
        self.checkIdle()
        nextSerial, entries = state
        self.clear()
        self.reserve(max(len(entries), MINIMUM_CAPACITY))
        for entry.rank, entry.number, entry.serial, entry.keyIsItem, item in entries:
            self.entryItems.append(item)
            self.entries[self.size] = entry
            self.size += 1
            self.objectKeys += entry.keyIsItem
        self.nextSerial = nextSerial

    # -- C level --------------------------------------------------------

    cdef int pushNumber(self, object item, double number) except -1:
        """Push ``item`` keyed by ``number``."""
        cdef HeapEntry entry
        if number != number:
            raise ValueError(NAN_PRIORITY_ERROR)
        entry.number = number
        entry.rank = 0
        entry.keyIsItem = False
        return self.pushEntry(item, entry)

    cdef int pushObject(self, object item) except -1:
        """Push ``item`` keyed by itself, or as the sentinel if None."""
        cdef HeapEntry entry
        entry.number = 0.0
        entry.rank = item is None
        entry.keyIsItem = item is not None
        return self.pushEntry(item, entry)

    cdef object popItem(self):
        """Remove and return the root item; the heap must not be empty."""
        cdef Py_ssize_t last = self.size - 1
        self.checkIdle()
        self.objectKeys -= self.entries[0].keyIsItem
        swapEntries(self.entries, itemArray(self.entryItems), 0, last)
        self.size = last
        item = self.entryItems.pop()
        if last > 1:
            self.siftRoot()
        self.shrink()
        return item

    cdef int pushEntry(self, object item, HeapEntry entry) except -1:
        """Append ``entry`` (its serial still to assign) and sift it."""
        self.checkIdle()
        if self.size == self.capacity:
            self.reserve(2 * self.capacity if self.capacity else MINIMUM_CAPACITY)
        entry.serial = self.nextSerial
        self.nextSerial += 1
        self.entryItems.append(item)
        self.entries[self.size] = entry
        self.size += 1
        self.objectKeys += entry.keyIsItem
        return self.siftPushed(entry.serial)

    cdef int siftPushed(self, unsigned long long serial) except -1:
        """Sift the last entry up; if a comparison raises, undo the push."""
        if self.objectKeys == 0:  # C comparisons only: nothing can fail
            return siftDown(self.entries, itemArray(self.entryItems),
                            0, self.size - 1)
        self.busy = True
        try:
            siftDown(self.entries, itemArray(self.entryItems),
                     0, self.size - 1)
        except Exception:
            self.discard(serial)
            raise
        finally:
            self.busy = False
        return 0

    cdef int siftRoot(self) except -1:
        """Sift the root down after a pop."""
        if self.objectKeys == 0:
            return siftUp(self.entries, itemArray(self.entryItems),
                          self.size, 0)
        self.busy = True
        try:
            siftUp(self.entries, itemArray(self.entryItems), self.size, 0)
        finally:
            self.busy = False
        return 0

    cdef int discard(self, unsigned long long serial) except -1:
        """Undo a failed push as the pure twin does, comparing nothing: walk
        the entry back down the path it climbed, then drop it from the end."""
        cdef Py_ssize_t path[64]  # deeper than any heap that fits in memory
        cdef int depth = 0
        path[0] = self.size - 1
        while path[depth] > 0 and self.entries[path[depth]].serial != serial:
            path[depth + 1] = (path[depth] - 1) >> 1
            depth += 1
        while depth > 0:
            swapEntries(self.entries, itemArray(self.entryItems),
                        path[depth], path[depth - 1])
            depth -= 1
        self.size -= 1
        self.objectKeys -= self.entries[self.size].keyIsItem
        self.entryItems.pop()
        return 0

    cdef list cancelSelected(self, object selector):
        """cancel() itself, run while the heap is marked busy."""
        cdef Py_ssize_t size = self.size, index, keptCount = 0, removedCount = 0
        cdef PyObject **items = itemArray(self.entryItems)
        cdef unsigned char *chosen = <unsigned char *>malloc(size + 1)
        cdef SortRecord *removed = NULL
        cdef HeapEntry *kept = NULL
        cdef bint removedObjectKeys = False
        cdef list keptItems
        if chosen is NULL:
            raise MemoryError()
        try:
            for index in range(size):
                chosen[index] = bool(selector(<object>items[index]))
                removedCount += chosen[index]
            if removedCount == 0:
                return []
            keptCount = size - removedCount
            removed = <SortRecord *>malloc(removedCount * sizeof(SortRecord))
            kept = <HeapEntry *>malloc(
                max(keptCount, MINIMUM_CAPACITY) * sizeof(HeapEntry))
            if removed is NULL or kept is NULL:
                raise MemoryError()
            keptItems = PyList_New(keptCount)
            removedCount = keptCount = 0
            for index in range(size):
                if chosen[index]:
                    removed[removedCount].entry = self.entries[index]
                    removed[removedCount].item = items[index]
                    removedObjectKeys |= self.entries[index].keyIsItem
                    removedCount += 1
                else:
                    kept[keptCount] = self.entries[index]
                    Py_INCREF(<object>items[index])
                    PyList_SET_ITEM(keptItems, keptCount, <object>items[index])
                    keptCount += 1
            result = itemsInPopOrder(removed, removedCount, removedObjectKeys)
            heapify(kept, itemArray(keptItems), keptCount)
            # Commit: nothing below can fail.
            free(self.entries)
            self.entries, kept = kept, NULL
            self.capacity = max(keptCount, MINIMUM_CAPACITY)
            self.size = keptCount
            self.entryItems = keptItems
            self.objectKeys = 0
            for index in range(keptCount):
                self.objectKeys += self.entries[index].keyIsItem
            return result
        finally:
            free(chosen)
            free(removed)
            free(kept)

    cdef list sortedItems(self):
        """The items in pop order, from a snapshot of the entries."""
        cdef Py_ssize_t index
        cdef PyObject **items = itemArray(self.entryItems)
        cdef bint wasBusy = self.busy
        cdef SortRecord *records
        if self.size == 0:
            return []
        records = <SortRecord *>malloc(self.size * sizeof(SortRecord))
        if records is NULL:
            raise MemoryError()
        for index in range(self.size):
            records[index].entry = self.entries[index]
            records[index].item = items[index]
        self.busy = True  # the records borrow the items: no changes now
        try:
            return itemsInPopOrder(records, self.size, self.objectKeys != 0)
        finally:
            self.busy = wasBusy
            free(records)

    cdef int checkIdle(self) except -1:
        """Refuse a change while a comparison or selector is running."""
        if self.busy:
            raise RuntimeError(BUSY_ERROR)
        return 0

    cdef int reserve(self, Py_ssize_t capacity) except -1:
        """Resize the entry array to hold ``capacity`` (>= size) entries."""
        cdef HeapEntry *entries
        if capacity > PY_SSIZE_T_MAX // <Py_ssize_t>sizeof(HeapEntry):
            raise MemoryError()
        entries = <HeapEntry *>realloc(self.entries,
                                       capacity * sizeof(HeapEntry))
        if entries is NULL:
            raise MemoryError()
        self.entries = entries
        self.capacity = capacity
        return 0

    cdef void shrink(self) noexcept:
        """Halve the entry array once it is less than a quarter full."""
        cdef HeapEntry *entries
        if self.capacity > 4 * MINIMUM_CAPACITY and self.size < self.capacity >> 2:
            entries = <HeapEntry *>realloc(
                self.entries, (self.capacity >> 1) * sizeof(HeapEntry))
            if entries is not NULL:
                self.entries = entries
                self.capacity >>= 1


# ---------------------------------------------------------------------------
# Niceness and series serials
# ---------------------------------------------------------------------------

cdef object pythonFactor(object niceness):
    """The multiplier of a valid niceness, in Python arithmetic exactly as
    the pure twin writes it."""
    return 1 + ((niceness + 20) / 10) ** 2


#: The factor of each niceness -20..+20, computed once the pure twin's way
#: (so the products are bit-identical), as Python floats and as C doubles.
cdef tuple FACTOR_OBJECTS = tuple([pythonFactor(n) for n in range(-20, 21)])
cdef double FACTORS[41]
FACTORS[:] = FACTOR_OBJECTS


cdef int nicenessIndex(object niceness) except -2:
    """
    Validate ``niceness``: return its index 0..40 into FACTORS when it is a
    plain int or bool, -1 for an int subclass (whose arithmetic stays
    Python's), and raise ValueError otherwise.
    """
    cdef int overflow = 0
    cdef long value
    if type(niceness) is int or type(niceness) is bool:
        value = PyLong_AsLongAndOverflow(niceness, &overflow)
        if overflow == 0 and -20 <= value <= 20:
            return value + 20
    elif isinstance(niceness, int) and -20 <= niceness <= 20:
        return -1
    raise ValueError(NICENESS_ERROR)


def checkNiceness(niceness):
    """Raise ValueError unless ``niceness`` is an int in -20..+20 (a bool
    passes, as in 0.9)."""
    nicenessIndex(niceness)


def taskPriority(serial, niceness):
    """
    The priority number of a task: ``serial * (1 + ((niceness+20)/10)**2)``.
    The factor runs from 1 at niceness -20 through 5 at 0 to 17 at +20.
    """
    cdef int index = nicenessIndex(niceness)
    if index < 0:
        return serial * pythonFactor(niceness)
    if PyFloat_CheckExact(serial):
        return PyFloat_AS_DOUBLE(serial) * FACTORS[index]
    return serial * FACTOR_OBJECTS[index]


cdef class SeriesPrioritizer:
    """
    Series serial numbers and the priority formula of ``TaskFactory``.

    Each call to ``serial(series)`` increments that series' counter and
    returns it as a float; a series seen for the first time starts at the
    highest serial handed out so far, so it begins behind earlier work.
    """

    def __cinit__(self, *args, **kwargs):
        self.seriesNumbers = {}
        self.highest = 0

    def __init__(self):
        pass

    def __reduce__(self):
        return (type(self), (), (self.seriesNumbers, self.highest))

    def __setstate__(self, state):
        self.seriesNumbers, self.highest = state

    def serial(self, series=None):
        """The next serial number of ``series``, as a float."""
        return PyNumber_Float(self.nextNumber(series))

    def priority(self, niceness, series=None):
        """Validate ``niceness``, then return the priority of the next task
        of ``series``."""
        cdef int index = nicenessIndex(niceness)
        serial = PyNumber_Float(self.nextNumber(series))
        if index < 0:
            return serial * pythonFactor(niceness)
        return PyFloat_AS_DOUBLE(serial) * FACTORS[index]

    cdef object nextNumber(self, object series):
        """
        Increment the counter of ``series`` and return it. The counters live
        in ``seriesNumbers`` (Python ints that users may read and set), so
        they stay Python objects; a plain dict is used through its C API.
        """
        cdef PyObject *current
        numbers = self.seriesNumbers
        if type(numbers) is dict:
            current = PyDict_GetItemWithError(numbers, series)
            number = (self.highest if current is NULL else <object>current) + 1
            PyDict_SetItem(numbers, series, number)
        else:
            number = numbers.get(series, self.highest) + 1
            numbers[series] = number
        if number > self.highest:
            self.highest = number
        return number
