"""
Tests of ``asynqueue._speedups.scheduler``: every test runs on the compiled
module and on its pure-Python twin, and property tests check that both (and
a plain sorted-list model) agree on random sequences of operations.
"""
import gc
import math
import pickle
import sys
import weakref

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from asynqueue._speedups import compiledTwin
from asynqueue._speedups.pure import scheduler as pureScheduler


compiledScheduler = compiledTwin("scheduler")
NOT_BUILT = ("compiled scheduler not built: run "
             "'python setup.py build_ext --inplace'")


@pytest.fixture(scope="module", params=["compiled", "pure"])
def scheduler(request):
    """Each scheduler module in turn."""
    if request.param == "pure":
        return pureScheduler
    if compiledScheduler is None:
        pytest.skip(NOT_BUILT)
    return compiledScheduler


def bothModules():
    """The modules a cross-check can use (the pure one is always there)."""
    return [m for m in (compiledScheduler, pureScheduler) if m is not None]


class Token:
    """An item that cannot be ordered: comparing two raises TypeError."""

    __slots__ = ("number", "__weakref__")

    def __init__(self, number):
        self.number = number

    def __repr__(self):
        return f"Token({self.number})"


class Key:
    """An orderable item whose ``label`` never takes part in comparisons."""

    __slots__ = ("value", "label", "__weakref__")

    def __init__(self, value, label):
        self.value, self.label = value, label

    def __eq__(self, other):
        if not isinstance(other, Key):
            return NotImplemented
        return self.value == other.value

    def __lt__(self, other):
        if not isinstance(other, Key):
            return NotImplemented
        return self.value < other.value

    __hash__ = None


def popAll(heap):
    return [heap.pop() for _ in range(len(heap))]


def sameObjects(first, second):
    return len(first) == len(second) and all(
        a is b for a, b in zip(first, second))


# ---------------------------------------------------------------------------
# PriorityHeap: ordering
# ---------------------------------------------------------------------------

class TestOrdering:

    def test_numeric_priorities_pop_lowest_first(self, scheduler):
        heap = scheduler.PriorityHeap()
        tokens = {p: Token(p) for p in (5.0, -2.5, 3, 1e9, -1e9, 0.0)}
        for priority, token in tokens.items():
            heap.push(token, priority)
        assert popAll(heap) == [tokens[p] for p in sorted(tokens)]

    def test_fifo_among_equal_numeric_priorities(self, scheduler):
        heap = scheduler.PriorityHeap()
        tokens = [Token(n) for n in range(50)]
        for token in tokens:
            heap.push(token, 7.0)
        assert popAll(heap) == tokens

    def test_fifo_among_equal_object_keys(self, scheduler):
        heap = scheduler.PriorityHeap()
        keys = [Key(value, label) for label in range(5) for value in (2, 1)]
        for key in keys:
            heap.push(key)
        popped = popAll(heap)
        assert [(k.value, k.label) for k in popped] == (
            [(1, n) for n in range(5)] + [(2, n) for n in range(5)])

    def test_none_sentinel_pops_last(self, scheduler):
        heap = scheduler.PriorityHeap()
        heap.push(None)
        late = Token("late")
        heap.push(late, math.inf)
        relax = Token("relax")
        heap.push(relax, scheduler.RELAX_PRIORITY)
        heap.push(10**30)
        assert heap.peek() is relax
        assert popAll(heap) == [relax, 10**30, late, None]

    def test_sentinels_are_fifo_and_none_with_priority_is_an_item(self, scheduler):
        heap = scheduler.PriorityHeap()
        heap.push(None)
        heap.push(None, 1.0)
        heap.push(None)
        first = Token(0)
        heap.push(first, 2.0)
        assert popAll(heap) == [None, first, None, None]
        assert len(heap) == 0

    def test_mixed_int_and_float_priorities(self, scheduler):
        heap = scheduler.PriorityHeap()
        a, b, c, d = (Token(n) for n in range(4))
        heap.push(a, 2)
        heap.push(b, 1.5)
        heap.push(c, 2.0)
        heap.push(d, True)
        assert popAll(heap) == [d, b, a, c]

    def test_numeric_and_object_keys_compare_as_python_numbers(self, scheduler):
        heap = scheduler.PriorityHeap()
        token = Token("numeric")
        heap.push(3)
        heap.push(token, 2.5)
        heap.push(2)
        heap.push(2.0)
        big = 2**53 + 1  # above float(2**53): exact int/float comparison
        heap.push(big)
        heap.push(Token("2**53"), 2**53)
        popped = popAll(heap)
        assert popped[:4] == [2, 2.0, token, 3]
        assert popped[5] is big

    def test_equal_numeric_and_object_keys_are_fifo(self, scheduler):
        heap = scheduler.PriorityHeap()
        token = Token(0)
        heap.push(1)
        heap.push(token, 1.0)
        heap.push(1.0)
        assert sameObjects(popAll(heap), [1, token, 1.0])

    def test_string_keys(self, scheduler):
        heap = scheduler.PriorityHeap()
        for word in ("pear", "apple", "fig", "apple"):
            heap.push(word)
        heap.push(None)
        assert heap.items() == ["apple", "apple", "fig", "pear", None]
        assert popAll(heap) == ["apple", "apple", "fig", "pear", None]

    def test_priority_is_converted_like_float(self, scheduler):
        heap = scheduler.PriorityHeap()
        a, b = Token("a"), Token("b")
        heap.push(a, "2.5")
        heap.push(b, -0.0)
        heap.push(Token("c"), 0.0)
        assert heap.pop() is b and heap.pop().number == "c"
        assert heap.pop() is a

    def test_peek_len_bool(self, scheduler):
        heap = scheduler.PriorityHeap()
        assert len(heap) == 0 and not heap
        heap.push("b")
        heap.push("a")
        assert heap.peek() == "a" and len(heap) == 2 and heap
        assert heap.pop() == "a" and heap.peek() == "b"

    def test_items_and_clear_return_pop_order(self, scheduler):
        heap = scheduler.PriorityHeap()
        tokens = [Token(n) for n in range(20)]
        for n, token in enumerate(tokens):
            heap.push(token, (n * 7) % 5)
        expected = sorted(tokens, key=lambda t: ((t.number * 7) % 5, t.number))
        assert heap.items() == expected and len(heap) == 20
        assert heap.clear() == expected
        assert len(heap) == 0 and heap.items() == [] and heap.clear() == []
        heap.push(tokens[0], 1)
        assert heap.pop() is tokens[0]

    def test_many_items(self, scheduler):
        heap = scheduler.PriorityHeap()
        priorities = [(n * 7919) % 10007 for n in range(10007)]
        tokens = [Token(p) for p in priorities]
        for token in tokens:
            heap.push(token, token.number)
        assert [t.number for t in popAll(heap)] == sorted(priorities)


# ---------------------------------------------------------------------------
# PriorityHeap: cancel
# ---------------------------------------------------------------------------

class TestCancel:

    def test_select_all_removes_every_item(self, scheduler):
        heap = scheduler.PriorityHeap()
        for n in range(6):
            heap.push(n)
        assert heap.cancel(lambda item: True) == [0, 1, 2, 3, 4, 5]
        assert len(heap) == 0 and heap.items() == []

    def test_cancel_returns_pop_order_and_keeps_the_rest(self, scheduler):
        heap = scheduler.PriorityHeap()
        tokens = [Token(n) for n in range(30)]
        for token in reversed(tokens):
            heap.push(token, token.number % 10)
        removed = heap.cancel(lambda t: t.number % 3 == 0)
        order = lambda t: (t.number % 10, -t.number)  # pushed in reverse
        assert removed == sorted(
            (t for t in tokens if t.number % 3 == 0), key=order)
        assert popAll(heap) == sorted(
            (t for t in tokens if t.number % 3), key=order)

    def test_heap_stays_valid_after_cancel(self, scheduler):
        heap = scheduler.PriorityHeap()
        priorities = [(n * 7919) % 1009 for n in range(1009)]
        for n in priorities:
            heap.push(Token(n), n)
        for modulus in (7, 5, 3):
            heap.cancel(lambda t: t.number % modulus == 1)
            heap.push(Token(-1), -1)
            assert heap.pop().number == -1
        left = [n for n in priorities if all(n % m != 1 for m in (7, 5, 3))]
        assert [t.number for t in popAll(heap)] == sorted(left)

    def test_cancel_object_keys_and_sentinel(self, scheduler):
        heap = scheduler.PriorityHeap()
        for item in (4, None, 2, 3.5, 1):
            heap.push(item)
        assert heap.cancel(lambda x: x is None or x > 2) == [3.5, 4, None]
        assert heap.items() == [1, 2]

    def test_cancel_nothing(self, scheduler):
        heap = scheduler.PriorityHeap()
        heap.push("a")
        assert heap.cancel(lambda x: False) == []
        assert heap.cancel(lambda x: 0) == [] and heap.items() == ["a"]
        assert scheduler.PriorityHeap().cancel(lambda x: True) == []

    def test_selector_sees_every_item_once(self, scheduler):
        heap = scheduler.PriorityHeap()
        tokens = [Token(n) for n in range(12)]
        for token in tokens:
            heap.push(token, -token.number)
        seen = []
        heap.cancel(lambda t: seen.append(t))
        assert sorted(seen, key=lambda t: t.number) == tokens

    def test_selector_exception_leaves_heap_unchanged(self, scheduler):
        heap = scheduler.PriorityHeap()
        for n in range(10):
            heap.push(n)
        before = heap.items()

        def selector(item):
            if item == 7:
                raise KeyError("selector failed")
            return item % 2

        with pytest.raises(KeyError, match="selector failed"):
            heap.cancel(selector)
        assert heap.items() == before and popAll(heap) == before


# ---------------------------------------------------------------------------
# PriorityHeap: errors
# ---------------------------------------------------------------------------

class TestErrors:

    def test_empty_pop_and_peek(self, scheduler):
        heap = scheduler.PriorityHeap()
        with pytest.raises(IndexError) as info:
            heap.pop()
        assert str(info.value) == "pop from an empty PriorityHeap"
        with pytest.raises(IndexError) as info:
            heap.peek()
        assert str(info.value) == "peek at an empty PriorityHeap"
        heap.push(1)
        heap.pop()
        with pytest.raises(IndexError):
            heap.pop()

    def test_incomparable_key_leaves_heap_unchanged(self, scheduler):
        heap = scheduler.PriorityHeap()
        for n in (5, 3, 8, 1, 9, 2, 7):
            heap.push(n)
        heap.push(None)
        before = heap.items()
        for bad in ("x", Token(0), (1, 2)):
            with pytest.raises(TypeError):
                heap.push(bad)
        with pytest.raises(TypeError):
            heap.push(Token(1))
        assert heap.items() == before and len(heap) == len(before)
        assert popAll(heap) == before

    def test_failed_push_is_undone_without_comparing(self, scheduler):
        comparisons = []

        class Counted(Key):
            def __lt__(self, other):
                comparisons.append(other)
                return Key.__lt__(self, other)

        heap = scheduler.PriorityHeap()
        for n in range(1000):
            heap.push(Counted(n, n))
        del comparisons[:]
        with pytest.raises(TypeError):
            heap.push(Token(0), 1.0)  # compared along one path only
        assert len(comparisons) <= 10
        assert [k.value for k in popAll(heap)] == list(range(1000))

    def test_numeric_key_against_string_keys(self, scheduler):
        heap = scheduler.PriorityHeap()
        heap.push("b")
        heap.push("a")
        with pytest.raises(TypeError):
            heap.push(Token(0), 1.0)
        assert heap.items() == ["a", "b"]

    def test_error_messages_match_between_modules(self):
        messages = []
        for module in bothModules():
            heap = module.PriorityHeap()
            for n in (5, 3, 8, 1):
                heap.push(n)
            with pytest.raises(TypeError) as info:
                heap.push("x")
            messages.append(str(info.value))
        assert len(set(messages)) == 1

    def test_bad_priorities(self, scheduler):
        heap = scheduler.PriorityHeap()
        heap.push(Token(0), 1.0)
        with pytest.raises(ValueError) as info:
            heap.push(Token(1), math.nan)
        assert str(info.value) == "Priority must be a number, not NaN"
        with pytest.raises(ValueError):
            heap.push(Token(2), "nan")
        with pytest.raises(TypeError):
            heap.push(Token(3), object())
        with pytest.raises(OverflowError):
            heap.push(Token(4), 10**400)
        assert len(heap) == 1 and heap.pop().number == 0

    def test_constructor_takes_no_arguments(self, scheduler):
        with pytest.raises(TypeError):
            scheduler.PriorityHeap(1)
        with pytest.raises(TypeError):
            scheduler.SeriesPrioritizer(1)

    def test_python_subclass_with_its_own_constructor(self, scheduler):
        class LabelledHeap(scheduler.PriorityHeap):
            def __init__(self, label):
                super().__init__()
                self.label = label

        heap = LabelledHeap("x")
        heap.push("b")
        heap.push("a")
        assert heap.label == "x" and popAll(heap) == ["a", "b"]


class TestReentrancy:
    """Changing a heap from inside its own comparisons or selector: the
    compiled heap refuses (it would otherwise sift freed memory); the pure
    twin inherits whatever heapq and list iteration do."""

    @pytest.fixture(autouse=True)
    def compiledOnly(self, scheduler):
        if scheduler is pureScheduler:
            pytest.skip("memory safety under re-entrancy is the compiled "
                        "heap's concern; the pure twin follows heapq")

    def test_selector_that_pushes(self, scheduler):
        heap = scheduler.PriorityHeap()
        for n in range(5):
            heap.push(n)
        with pytest.raises(RuntimeError, match="from inside"):
            heap.cancel(lambda item: heap.push(item + 10))
        assert heap.items() == [0, 1, 2, 3, 4]

    def test_comparison_that_pops(self, scheduler):
        heap = scheduler.PriorityHeap()

        class Greedy(Key):
            def __lt__(self, other):
                heap.pop()
                return Key.__lt__(self, other)

        for n in range(5):
            heap.push(Key(n, n))
        with pytest.raises(RuntimeError):
            heap.push(Greedy(-1, "greedy"))
        assert [k.value for k in heap.items()] == [0, 1, 2, 3, 4]
        assert len(heap) == 5

    def test_reading_inside_a_selector(self, scheduler):
        heap = scheduler.PriorityHeap()
        for n in range(5):
            heap.push(n)
        sizes = []
        heap.cancel(lambda item: sizes.append((len(heap), heap.peek(),
                                               len(heap.items()))))
        assert sizes == [(5, 0, 5)] * 5


# ---------------------------------------------------------------------------
# PriorityHeap: references and memory
# ---------------------------------------------------------------------------

class TestReferences:

    def test_items_are_released(self, scheduler):
        heap = scheduler.PriorityHeap()
        tokens = [Token(n) for n in range(100)]
        refs = [weakref.ref(t) for t in tokens]
        for token in tokens:
            heap.push(token, token.number % 7)
        popped = [heap.pop() for _ in range(30)]
        cancelled = heap.cancel(lambda t: t.number % 2)
        cleared = heap.clear()
        assert len(popped) + len(cancelled) + len(cleared) == 100
        del tokens, popped, cancelled, cleared, token
        assert all(ref() is None for ref in refs)

    def test_refcounts_return_to_baseline(self, scheduler):
        key, token = Key(1, "key"), Token(0)
        baselines = sys.getrefcount(key), sys.getrefcount(token)
        keyed, numbered = scheduler.PriorityHeap(), scheduler.PriorityHeap()
        for _ in range(3):
            keyed.push(key)
            keyed.push(None)
            numbered.push(token, 1.0)
            keyed.items(), numbered.items(), keyed.peek(), numbered.peek()
        keyed.pop(), numbered.pop()
        keyed.cancel(lambda item: item is None)
        numbered.cancel(lambda item: True)
        with pytest.raises(TypeError):
            keyed.push(token)  # a Token has no order: the push is undone
        with pytest.raises(ValueError):
            numbered.push(token, math.nan)
        keyed.clear(), numbered.clear()
        assert (sys.getrefcount(key), sys.getrefcount(token)) == baselines

    def test_heap_releases_items_when_deleted(self, scheduler):
        heap = scheduler.PriorityHeap()
        tokens = [Token(n) for n in range(10)]
        refs = [weakref.ref(t) for t in tokens]
        for token in tokens:
            heap.push(token, 1)
        del heap, tokens, token
        assert all(ref() is None for ref in refs)

    def test_reference_cycle_through_the_heap_is_collected(self, scheduler):
        heap = scheduler.PriorityHeap()
        holder = Key(0, None)
        holder.label = heap  # item -> heap -> item
        heap.push(holder)
        ref = weakref.ref(holder)
        del heap, holder
        gc.collect()
        assert ref() is None


    def test_pickle_round_trip(self, scheduler):
        heap = scheduler.PriorityHeap()
        for item in (5, None, 3, 8, 1):
            heap.push(item)
        heap.push("x", 2.5)
        copy = pickle.loads(pickle.dumps(heap))
        assert copy.items() == heap.items() == [1, "x", 3, 5, 8, None]
        copy.push(2)
        heap.push(2.5, 2.5)  # later serial than "x": after it
        assert popAll(copy) == [1, 2, "x", 3, 5, 8, None]
        assert popAll(heap) == [1, "x", 2.5, 3, 5, 8, None]
        prioritizer = scheduler.SeriesPrioritizer()
        prioritizer.serial(1), prioritizer.serial(2)
        copy = pickle.loads(pickle.dumps(prioritizer))
        assert copy.seriesNumbers == {1: 1, 2: 2}
        assert copy.serial("new") == 3.0 and prioritizer.serial(1) == 2.0


# ---------------------------------------------------------------------------
# SeriesPrioritizer, checkNiceness, taskPriority
# ---------------------------------------------------------------------------

class TestPriorityArithmetic:

    def test_constants(self, scheduler):
        assert scheduler.RUSH_PRIORITY == -1000000
        assert scheduler.RELAX_PRIORITY == 1000000
        assert scheduler.NICENESS_ERROR == (
            "Niceness must be an integer between -20 and +20")
        assert set(scheduler.__all__) == set(pureScheduler.__all__)

    def test_interleaved_series(self, scheduler):
        prioritizer = scheduler.SeriesPrioritizer()
        serials = [prioritizer.serial(s) for s in (1, 2, 1, 2, 1, 2)]
        assert serials == [1, 2, 2, 3, 3, 4]
        assert all(type(s) is float for s in serials)
        assert prioritizer.seriesNumbers == {1: 3, 2: 4}
        assert type(prioritizer.seriesNumbers) is dict

    def test_late_series_starts_above_earlier_serials(self, scheduler):
        prioritizer = scheduler.SeriesPrioritizer()
        for _ in range(5):
            prioritizer.serial()
        prioritizer.serial("a")
        assert prioritizer.serial("late") == 7.0
        assert prioritizer.serial(None) == 6.0

    def test_series_numbers_is_the_live_dict(self, scheduler):
        prioritizer = scheduler.SeriesPrioritizer()
        prioritizer.serial("x")
        numbers = prioritizer.seriesNumbers
        numbers["x"] = 10
        assert prioritizer.serial("x") == 11.0
        assert prioritizer.serial("y") == 12.0
        prioritizer.seriesNumbers = {}
        assert prioritizer.serial("x") == 13.0
        with pytest.raises(TypeError):
            prioritizer.serial([])  # unhashable series

    def test_formula_values(self, scheduler):
        assert [scheduler.taskPriority(1, n) for n in (-20, 0, 20)] == [
            1.0, 5.0, 17.0]
        assert scheduler.taskPriority(3.0, 10) == 3.0 * (1 + 3.0**2)
        prioritizer = scheduler.SeriesPrioritizer()
        assert [prioritizer.priority(n) for n in (-20, 0, 20)] == [
            1.0, 10.0, 51.0]
        assert prioritizer.priority(False, "s") == 4.0 * 5

    def test_formula_is_bit_identical_to_the_pure_twin(self, scheduler):
        serials = [1, 2, 3.0, 7, 12345.0, 2**40 + 1, 0.1, True]
        for niceness in list(range(-20, 21)) + [True, False]:
            for serial in serials:
                mine = scheduler.taskPriority(serial, niceness)
                reference = pureScheduler.taskPriority(serial, niceness)
                assert mine.hex() == reference.hex()
        mine, reference = scheduler.SeriesPrioritizer(), pureScheduler.SeriesPrioritizer()
        for step in range(200):
            niceness, series = step % 41 - 20, step % 3
            assert mine.priority(niceness, series).hex() == (
                reference.priority(niceness, series).hex())

    def test_int_subclass_niceness(self, scheduler):
        class Niceness(int):
            pass

        assert scheduler.taskPriority(2, Niceness(10)) == 20.0
        with pytest.raises(ValueError):
            scheduler.checkNiceness(Niceness(21))

    @pytest.mark.parametrize("niceness", [0, -20, 20, True, False, 7])
    def test_valid_niceness(self, scheduler, niceness):
        assert scheduler.checkNiceness(niceness) is None

    @pytest.mark.parametrize("niceness", [21, -21, 1.5, "1", None, 10**30])
    def test_invalid_niceness(self, scheduler, niceness):
        for check in (scheduler.checkNiceness,
                      lambda n: scheduler.taskPriority(1.0, n),
                      lambda n: scheduler.SeriesPrioritizer().priority(n)):
            with pytest.raises(ValueError) as info:
                check(niceness)
            assert str(info.value) == scheduler.NICENESS_ERROR

    def test_bad_niceness_does_not_advance_the_series(self, scheduler):
        prioritizer = scheduler.SeriesPrioritizer()
        with pytest.raises(ValueError):
            prioritizer.priority(99, "s")
        assert prioritizer.seriesNumbers == {}
        assert prioritizer.priority(0, "s") == 5.0


# ---------------------------------------------------------------------------
# Property tests: compiled heap == pure heap == sorted-list model
# ---------------------------------------------------------------------------

class Model:
    """The ordering contract written as plainly as possible."""

    def __init__(self):
        self.entries = []
        self.serial = 0

    def __len__(self):
        return len(self.entries)

    def push(self, item, priority=None):
        if priority is not None:
            number = float(priority)
            entry = (0, number, self.serial, item)
        elif item is None:
            entry = (1, 0.0, self.serial, item)
        else:
            entry = (0, item, self.serial, item)
        self.serial += 1
        ordinary = [e for e in self.entries if e[0] == 0]
        if entry[0] == 0 and ordinary:
            entry < ordinary[0]  # builtin keys: raises iff of another kind
        self.entries.append(entry)

    def pop(self):
        if not self.entries:
            raise IndexError("pop from an empty PriorityHeap")
        entry = min(self.entries)
        self.entries.remove(entry)
        return entry[3]

    def cancel(self, selector):
        removed = sorted(e for e in self.entries if selector(e[3]))
        self.entries = [e for e in self.entries if not selector(e[3])]
        return [e[3] for e in removed]

    def items(self):
        return [e[3] for e in sorted(self.entries)]

    def clear(self):
        items = self.items()
        self.entries = []
        return items


def label(item):
    """A stable small number for any item the strategies make."""
    if isinstance(item, Token):
        return item.number
    if isinstance(item, str):
        return len(item)
    if isinstance(item, float):
        return int(item) if math.isfinite(item) else 0
    if isinstance(item, int):
        return item
    return 0


numbers = st.one_of(
    st.floats(allow_nan=False, min_value=-1e6, max_value=1e6),
    st.sampled_from([0.0, -0.0, 1.0, 2.0, math.inf, -math.inf, 2.0**53]),
    st.integers(-5, 5),
    st.sampled_from([2**53, 2**53 + 1, True]),
)
objectKeys = st.one_of(
    st.integers(-5, 5),
    st.sampled_from([2**53 + 1, 1.0, 2.5, -0.0, math.inf, None, None]),
    st.text(alphabet="ab", max_size=2),
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("pushNumber"), numbers),
        st.tuples(st.just("pushObject"), objectKeys),
        st.tuples(st.just("pushMany"), st.lists(numbers, max_size=40)),
        st.tuples(st.just("pop")),
        st.tuples(st.just("cancel"), st.integers(1, 3), st.integers(0, 2)),
        st.tuples(st.just("items")),
        st.tuples(st.just("clear")),
    ),
    max_size=60,
)


def tokensFor(operation):
    """Fresh tokens for the numeric pushes of ``operation``; every heap gets
    the very same ones."""
    if operation[0] == "pushNumber":
        return [Token(0)]
    if operation[0] == "pushMany":
        return [Token(n) for n in range(len(operation[1]))]
    return []


def apply(heap, operation, tokens):
    """Run ``operation`` on ``heap``; return its result or its error type."""
    kind = operation[0]
    try:
        if kind == "pushNumber":
            return heap.push(tokens[0], operation[1])
        if kind == "pushObject":
            return heap.push(operation[1])
        if kind == "pushMany":
            return [heap.push(t, n) for t, n in zip(tokens, operation[1])]
        if kind == "cancel":
            _, modulus, remainder = operation
            return heap.cancel(lambda item: label(item) % modulus == remainder)
        return getattr(heap, kind)()
    except (TypeError, IndexError) as error:
        return type(error)


def outcome(result):
    """Results compared by identity: the same objects went into each heap."""
    if isinstance(result, list):
        return [id(item) for item in result]
    return id(result)


def runAll(heaps, operations):
    """Apply each operation to every heap and check they all agree."""
    for operation in operations:
        tokens = tokensFor(operation)
        results = [outcome(apply(h, operation, tokens)) for h in heaps]
        assert all(r == results[0] for r in results[1:]), operation
        assert len({len(h) for h in heaps}) == 1
    final = [outcome(h.clear()) for h in heaps]
    assert all(f == final[0] for f in final)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(operations)
def test_heaps_agree_with_the_model(operations):
    runAll([m.PriorityHeap() for m in bothModules()] + [Model()], operations)


partialKeys = st.one_of(
    st.frozensets(st.integers(0, 3), max_size=3),  # ordered by inclusion
    st.sampled_from([math.nan, float("nan"), None]),
)


@pytest.mark.skipif(compiledScheduler is None, reason=NOT_BUILT)
@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("pushObject"), partialKeys),
    st.tuples(st.just("pushNumber"), st.floats(allow_nan=False)),
    st.tuples(st.just("pop")),
    st.tuples(st.just("cancel"), st.integers(1, 3), st.integers(0, 2)),
    st.tuples(st.just("items")),
), max_size=50))
def test_compiled_follows_heapq_even_without_a_total_order(operations):
    """Sets and NaN keys have no total order, so what pops depends on every
    comparison the heap makes: the compiled heap makes heapq's."""
    runAll([compiledScheduler.PriorityHeap(), pureScheduler.PriorityHeap()],
           operations)
