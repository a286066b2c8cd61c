"""
Priority scheduling for asynqueue: the heap behind ``base.Priority`` and the
priority arithmetic of ``tasks.TaskFactory``. This is the pure-Python twin
of the compiled ``scheduler`` module; both behave identically.

Ordering contract (shared with the compiled module): every entry is keyed by
``(rank, key, serial)`` compared like a tuple. ``rank`` is 1 for the
shutdown sentinel ``None`` (pushed without a priority) and 0 otherwise;
``key`` is the numeric priority given to ``push`` (as a float) or else the
item itself; ``serial`` counts pushes, so equal keys pop first-in,
first-out and items are never compared with each other.
"""
import heapq
from itertools import count

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
#: The message of the ValueError raised for a NaN priority, which no order
#: can place (and which a C double could not keep apart by identity).
_NAN_PRIORITY_ERROR = "Priority must be a number, not NaN"


class PriorityHeap:
    """
    A min-heap of items with O(log n) push and pop, first-in, first-out
    among equal keys, and removal of every item a predicate selects.
    """

    __slots__ = ("_entries", "_serials")

    def __init__(self):
        self._entries = []
        self._serials = count()

    def __len__(self):
        return len(self._entries)

    def __bool__(self):
        return bool(self._entries)

    def push(self, item, priority=None):
        """
        Add ``item`` keyed by the number ``priority``, or by the item itself
        when no priority is given (``None`` then sorts after everything).
        A NaN priority raises ValueError. If the key cannot be compared with
        the others, the TypeError propagates and the heap is left as it was.
        """
        if priority is not None:
            number = float(priority)
            if number != number:
                raise ValueError(_NAN_PRIORITY_ERROR)
            entry = (0, number, next(self._serials), item)
        elif item is None:
            entry = (1, 0.0, next(self._serials), item)
        else:
            entry = (0, item, next(self._serials), item)
        try:
            heapq.heappush(self._entries, entry)
        except Exception:
            self._discard(entry)
            raise

    def _discard(self, entry):
        """
        Undo a push whose sift failed, comparing nothing: walk ``entry``
        back down the path it climbed and drop it from the end, which leaves
        every other entry where it was. (Should a key comparison have
        changed the heap meanwhile, filter the entry out and heapify.)
        """
        entries = self._entries
        path = [len(entries) - 1]
        while path[-1] > 0 and entries[path[-1]] is not entry:
            path.append((path[-1] - 1) >> 1)
        if path[-1] < 0 or entries[path[-1]] is not entry:
            self._entries = [x for x in entries if x is not entry]
            heapq.heapify(self._entries)
            return
        for upper, lower in zip(path[:0:-1], path[-2::-1]):
            entries[upper], entries[lower] = entries[lower], entries[upper]
        entries.pop()

    def pop(self):
        """Remove and return the item with the lowest key."""
        if not self._entries:
            raise IndexError("pop from an empty PriorityHeap")
        return heapq.heappop(self._entries)[3]

    def peek(self):
        """Return the item with the lowest key without removing it."""
        if not self._entries:
            raise IndexError("peek at an empty PriorityHeap")
        return self._entries[0][3]

    def cancel(self, selector):
        """
        Remove every item for which ``selector(item)`` is true and return
        them in the order they would have popped. If the selector (or a key
        comparison) raises, the exception propagates and the heap is left as
        it was.
        """
        kept, removed = [], []
        for entry in self._entries:
            (removed if selector(entry[3]) else kept).append(entry)
        if removed:
            removed.sort()
            heapq.heapify(kept)
            self._entries = kept
        return [entry[3] for entry in removed]

    def items(self):
        """A list of the items in the order they would pop."""
        return [entry[3] for entry in sorted(self._entries)]

    def clear(self):
        """Remove every item and return them in the order they would pop."""
        items = self.items()
        self._entries = []
        return items


def checkNiceness(niceness):
    """Raise ValueError unless ``niceness`` is an int in -20..+20 (a bool
    passes, as in 0.9)."""
    if not isinstance(niceness, int) or not -20 <= niceness <= 20:
        raise ValueError(NICENESS_ERROR)


def taskPriority(serial, niceness):
    """
    The priority number of a task: ``serial * (1 + ((niceness+20)/10)**2)``.
    The factor runs from 1 at niceness -20 through 5 at 0 to 17 at +20.
    """
    checkNiceness(niceness)
    return serial * _nicenessFactor(niceness)


def _nicenessFactor(niceness):
    """The multiplier of a valid niceness."""
    return 1 + ((niceness + 20) / 10) ** 2


class SeriesPrioritizer:
    """
    Series serial numbers and the priority formula of ``TaskFactory``.

    Each call to ``serial(series)`` increments that series' counter and
    returns it as a float; a series seen for the first time starts at the
    highest serial handed out so far, so it begins behind earlier work.
    """

    __slots__ = ("seriesNumbers", "_highest")

    def __init__(self):
        self.seriesNumbers = {}
        self._highest = 0

    def serial(self, series=None):
        """The next serial number of ``series``, as a float."""
        number = self.seriesNumbers.get(series, self._highest) + 1
        self.seriesNumbers[series] = number
        if number > self._highest:
            self._highest = number
        return float(number)

    def priority(self, niceness, series=None):
        """Validate ``niceness``, then return the priority of the next task
        of ``series``."""
        checkNiceness(niceness)
        return self.serial(series) * _nicenessFactor(niceness)
