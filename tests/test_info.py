"""
Tests for asynqueue.info: hashIt, the showResult/whichThread decorators,
Converter, InfoHolder and Info.
"""
import os
import pickle
import re
import threading

import pytest
from hypothesis import given, strategies as st
from twisted.internet import defer
from twisted.python.failure import Failure

from asynqueue import info, util


# --- Helpers ----------------------------------------------------------------

class Picklable:
    """A picklable object with a method to describe calls of."""

    def __init__(self):
        self.x = 0

    def foo(self, x):
        self.x += x
        return 2 * x

    def __repr__(self):
        return "<Picklable>"


class Unhashable:
    """Neither hashable nor picklable."""
    __hash__ = None

    def __reduce__(self):
        raise TypeError("not picklable")


def _bar(x, y=0):
    return x + y


def _divide(x, y):
    return x / y


def _raised(f, *args):
    """Return the exception f(*args) raises."""
    try:
        f(*args)
    except Exception as e:
        return e
    raise AssertionError("no exception raised")


# --- hashIt -----------------------------------------------------------------

def test_hashIt_distinct_objects():
    objects = [
        None, "abc", "def", 1, 2.5, test_hashIt_distinct_objects,
        [1, 2], (3, 4), {1: 2, 2: 'a'}]
    hashes = [info.hashIt(x) for x in objects]
    assert len(set(hashes)) == len(objects)
    assert all(isinstance(x, int) for x in hashes)


def test_hashIt_dict_uses_sorted_keys():
    a = {'b': 2, 'a': 1, 'c': [1, 2]}
    b = {'c': [1, 2], 'a': 1, 'b': 2}
    assert info.hashIt(a) == info.hashIt(b)
    assert info.hashIt(a) != info.hashIt({'a': 1, 'b': 3, 'c': [1, 2]})


def test_hashIt_sums_hashes_as_documented():
    # Lists and tuples alike; element hashes are summed with their
    # indices, so some different values collide (why Info IDs are counters).
    assert info.hashIt([1, 2, 3]) == info.hashIt((1, 2, 3))
    assert info.hashIt([1, 2]) == info.hashIt([2, 1])
    assert info.hashIt(5) == hash(5)


def test_hashIt_mixed_dict_keys_raise_TypeError():
    with pytest.raises(TypeError):
        info.hashIt({1: 'a', 'b': 2})


def test_hashIt_unhashable_falls_back_to_pickle_then_zero():
    assert info.hashIt({1, 2}) == hash(hash(pickle.dumps({1, 2})))
    assert info.hashIt(Unhashable()) == 0


@given(st.dictionaries(st.text(), st.integers() | st.text()))
def test_hashIt_is_a_function_of_the_value(d):
    assert info.hashIt(d) == info.hashIt(dict(reversed(list(d.items()))))


# --- showResult / whichThread -----------------------------------------------

def _printed(capsys):
    return capsys.readouterr().out


@info.showResult
def adder(x, y=0):
    """Adds."""
    return x + y


class Shown:
    def __repr__(self):
        return "<Shown>"

    @info.showResult
    def double(self, x):
        return 2 * x

    @info.showResult
    def later(self, d):
        return d

    @staticmethod
    @info.showResult
    def static(x):
        return -x

    @info.showResult
    @info.whichThread
    def threaded(self, x):
        return x


@info.whichThread
@info.showResult
def threadedAbove(x):
    return x


def test_showResult_keeps_function_metadata():
    assert adder.__name__ == "adder"
    assert adder.__doc__ == "Adds."
    assert adder.__wrapped__(1, 2) == 3
    assert Shown().double.__name__ == "double"


def test_showResult_plain_function(capsys):
    assert adder(1, y=2) == 3
    out = _printed(capsys)
    assert re.search(r"\d{3}: adder\(1, y=2\) -> 3$", out.strip())


def test_showResult_method_shows_instance(capsys):
    assert Shown().double(4) == 8
    assert "<Shown>.double(4) -> 8" in _printed(capsys)


def test_showResult_staticmethod(capsys):
    assert Shown.static(3) == -3
    assert Shown().static(3) == -3
    out = _printed(capsys)
    assert out.count(": static(3) -> -3") == 2


def test_showResult_follows_deferreds(capsys):
    d = defer.Deferred()
    result = Shown().later(d)
    assert result is d
    assert _printed(capsys) == ""
    d.callback("done")
    assert "<Shown>.later(" in _printed(capsys)
    assert d.result == "done"


def test_showResult_passes_failures_through(capsys):
    d = defer.Deferred()
    Shown().later(d)
    d.errback(ZeroDivisionError("oops"))
    assert "oops" in _printed(capsys)
    with pytest.raises(ZeroDivisionError):
        d.result.raiseException()
    d.addErrback(lambda f: None)


def test_showResult_numbers_calls_in_order(capsys):
    adder(1)
    adder(2)
    numbers = [int(n) for n in re.findall(r"(\d{3,}): adder", _printed(capsys))]
    assert numbers[1] == numbers[0] + 1


def test_showResult_long_lines_break_before_result(capsys):
    adder("x" * 40, y="y" * 40)
    assert "\n -> " in _printed(capsys)


def test_whichThread_beneath_and_above(capsys):
    assert Shown().threaded(1) == 1
    threadedAbove(2)
    out = _printed(capsys)
    name = threading.current_thread().name
    assert "threaded(1) <Thread: {}> -> 1".format(name) in out
    assert "threadedAbove(2) <Thread: {}> -> 2".format(name) in out


def test_whichThread_only_affects_the_marked_function(capsys):
    adder(5)
    assert "<Thread:" not in _printed(capsys)


def test_whichThread_names_the_calling_thread(capsys):
    t = threading.Thread(target=threadedAbove, args=(7,), name="Worker-7")
    t.start()
    t.join()
    assert "<Thread: Worker-7>" in _printed(capsys)


# --- Converter --------------------------------------------------------------

def test_converter_strToFQN():
    cv = info.Converter()
    assert cv.strToFQN("asynqueue.util.testFunction") == \
        "asynqueue.util.testFunction"
    assert cv.strToFQN("asynqueue.util.TestStuff.add") == \
        "asynqueue.util.TestStuff.add"
    assert cv.strToFQN("os.path.join") == os.path.join.__module__ + ".join"
    assert cv.strToFQN("no.such.thing") is None
    assert cv.strToFQN("") is None


def test_converter_objToPickle():
    cv = info.Converter()
    assert pickle.loads(cv.objToPickle([1, "a"])) == [1, "a"]
    assert cv.objToPickle(lambda: None) is None
    assert cv.objToPickle(Unhashable()) is None


def test_converter_objToFQN():
    cv = info.Converter()
    assert cv.objToFQN(util.testFunction) == "asynqueue.util.testFunction"
    assert cv.objToFQN(lambda: None) is None


def test_converter_processObject_prefers_pickle_then_FQN():
    cv = info.Converter()
    assert pickle.loads(cv.processObject(util.testFunction)) is \
        util.testFunction
    # A module pickles only once twisted.persisted.styles has registered
    # a reducer for modules (Twisted's AMP and web import it): FQN before.
    converted = cv.processObject(os)
    assert converted == "os" or pickle.loads(converted) is os
    assert cv.processObject(lambda: None) is None


# --- Info: calls and IDs ----------------------------------------------------

def test_setCall_returns_self_and_sets_callDict():
    i = info.Info()
    assert i.setCall(_bar, (1,), {'y': 2}) is i
    callDict = i.getInfo(None, 'callDict')
    assert callDict['f'] is _bar
    assert callDict['fs'] == "_bar"
    assert callDict['args'] == (1,)
    assert callDict['kw'] == {'y': 2}
    assert callDict['instance'] is None
    assert 'thread' not in callDict


def test_setCall_metaArg_forms():
    i = info.Info()
    assert i.setCall(_bar).callDict['args'] == []
    assert i.setCall(_bar, 5).callDict['args'] == [5]
    assert i.setCall(_bar, [5, 6]).callDict['args'] == [5, 6]
    assert i.setCall(_bar, [5], {'y': 1}).callDict['kw'] == {'y': 1}
    with pytest.raises(TypeError):
        i.setCall(_bar, (), {}, "extra")


def test_setCall_needs_a_call():
    with pytest.raises(ValueError):
        info.Info().setCall()
    with pytest.raises(ValueError):
        info.Info().setCall(args=(1,))


def test_setCall_keywords_amend_the_call():
    i = info.Info()
    firstID = i.setCall(Picklable.foo).ID
    p = Picklable()
    i.setCall(args=(3,), instance=p)
    assert i.ID != firstID
    assert i.callDict['args'] == (3,)
    assert i.aboutCall() == "<Picklable>.foo(3)"
    i.setCall(kw={'z': 1})
    assert i.aboutCall() == "<Picklable>.foo(3, z=1)"
    assert i.setCall(_bar, 1, instance=p).aboutCall() == "<Picklable>._bar(1)"


def test_setCall_rejects_unknown_keywords():
    with pytest.raises(TypeError):
        info.Info().setCall(_bar, kwargs={})


def test_repeated_setCall_is_a_noop_without_remember():
    i = info.Info()
    ID = i.setCall(_bar, (1,), {}).ID
    assert i.setCall(_bar, (1,), {}).ID == ID
    assert i.setCall(_bar, (2,), {}).ID != ID


def test_repeated_setCall_after_amending_is_not_a_noop():
    i = info.Info()
    i.setCall(_bar, (1,), {})
    i.setCall(args=(9,))
    assert i.setCall(_bar, (1,), {}).callDict['args'] == (1,)


def test_setCall_noop_check_survives_uncomparable_args():
    class Uncomparable:
        def __eq__(self, other):
            raise ValueError("can't compare")
    i = info.Info()
    ID = i.setCall(_bar, Uncomparable()).ID
    assert i.setCall(_bar, Uncomparable()).ID != ID


def test_IDs_are_unique_counters_even_for_identical_calls():
    i = info.Info(remember=True)
    IDs = [i.setCall(_bar, (1,), {}).ID for _ in range(100)]
    assert len(set(IDs)) == 100
    assert IDs == sorted(IDs)
    assert set(i.pastInfo) == set(IDs)


def test_IDs_are_independent_of_hashIt(monkeypatch):
    monkeypatch.setattr(info, "hashIt", lambda *args: 42)
    i = info.Info()
    assert i.setCall(_bar, 1).ID != i.setCall(_bar, 2).ID


def test_ID_is_None_before_any_call():
    assert info.Info().ID is None


def test_remembered_info_by_ID():
    i = info.Info(remember=True)
    fakList = [
        (Picklable().foo, (1,), {}),
        (Picklable().foo, (2,), {}),
        (_bar, (3,), {}),
        (_bar, (3,), {'y': 1}),
    ]
    IDs = [i.setCall(*fak).ID for fak in fakList]
    for ID, (f, args, kw) in zip(IDs, fakList):
        callDict = i.getInfo(ID, 'callDict')
        assert callDict['fs'] == f.__name__
        assert callDict['args'] == args
        assert callDict['kw'] == kw


def test_getInfo_unknown_and_nowForget():
    i = info.Info(remember=True)
    ID = i.setCall(_bar).ID
    assert i.getInfo(ID, 'nothing') is None
    assert i.getInfo(ID + 1000, 'callDict') is None
    assert i.getInfo(ID, 'callDict', nowForget=True)['f'] is _bar
    assert ID not in i.pastInfo
    assert i.getInfo(None, 'callDict', nowForget=True)['f'] is _bar
    assert i.getInfo(None, 'callDict') is None


def test_getInfo_without_remember_knows_only_the_current_call():
    i = info.Info()
    ID = i.setCall(_bar).ID
    assert i.getInfo(ID, 'callDict')['f'] is _bar
    assert i.getInfo(ID, 'aboutCall') is None
    assert not hasattr(i, 'pastInfo')


def test_saveInfo_and_forgetID():
    i = info.Info(remember=True)
    ID = i.setCall(_bar).ID
    assert i.saveInfo('stuff', 123) == 123
    assert i.getInfo(ID, 'stuff') == 123
    i.forgetID(ID)
    assert i.pastInfo == {}
    i.forgetID(ID)
    assert info.Info().saveInfo('stuff', 1) == 1


def test_no_memory_growth_without_remember():
    i = info.Info()
    i.setCall(_bar, 0)
    before = dict(vars(i))
    for k in range(1000):
        i.setCall(_bar, k, {'y': k}).aboutCall()
        _raised(_divide, k, 0)
        try:
            _divide(k, 0)
        except ZeroDivisionError:
            i.aboutException()
    assert set(vars(i)) == set(before)
    assert vars(i)['callDict']['args'] == [999]
    assert not hasattr(i, 'pastInfo')


# --- Info: context and InfoHolder -------------------------------------------

def test_context_needs_remember():
    with pytest.raises(RuntimeError):
        with info.Info().context(_bar):
            pass


def test_interleaved_contexts_keep_their_own_calls():
    i = info.Info(remember=True)
    p = Picklable()
    with i.context(p.foo, 1) as x1:
        with i.context(p.foo, 1) as x2:
            i.setCall(_bar, 99)
            assert x1.ID != x2.ID
            assert x1.aboutCall() == "foo(1)"
            assert x2.aboutCall() == "foo(1)"
        assert x2.ID not in i.pastInfo
        assert x1.getInfo('callDict')['f'] == p.foo
    assert x1.ID not in i.pastInfo


def test_context_forgets_on_exception():
    i = info.Info(remember=True)
    with pytest.raises(KeyError):
        with i.context(_bar, 1) as x:
            raise KeyError("x")
    assert x.ID not in i.pastInfo


def test_infoHolder_methods():
    i = info.Info(remember=True)
    with i.context(util.testFunction, 3) as x:
        assert x.nn()[1] == util.o2p(util.testFunction)
        assert x.nn(raw=True) == (None, util.testFunction)
        exception = _raised(_divide, 1, 0)
        text = x.aboutException(exception)
        assert "Exception 'division by zero" in text
        assert "testFunction(3)" in text
        text = x.aboutFailure(Failure(exception))
        assert text.startswith("Failure 'division by zero'")


def test_infoHolder_aboutException_calls_aboutException(monkeypatch):
    i = info.Info(remember=True)
    calls = []
    monkeypatch.setattr(
        i, "aboutException", lambda *args: calls.append(args) or "text")
    holder = info.InfoHolder(i, 7)
    assert holder.aboutException("exc") == "text"
    assert calls == [(7, "exc")]


# --- Info: nn ---------------------------------------------------------------

def test_nn_function():
    ns, fn = info.Info().setCall(util.testFunction).nn()
    assert ns is None
    assert util.p2o(fn) is util.testFunction


def test_nn_method():
    stuff = util.TestStuff()
    stuff.accumulate(5)
    ns, fn = info.Info().setCall(stuff.accumulate).nn()
    assert isinstance(util.p2o(ns), util.TestStuff)
    assert util.p2o(ns).x == 5
    assert fn == "accumulate"


def test_nn_string_and_unusable():
    i = info.Info()
    assert i.setCall("asynqueue.util.testFunction").nn() == \
        (None, "asynqueue.util.testFunction")
    assert i.setCall("not.a.thing").nn() == (None, None)
    assert i.setCall(lambda: None).nn() == (None, None)
    assert info.Info().nn() == (None, None)


def test_nn_raw_and_cached_separately():
    i = info.Info(remember=True)
    stuff = util.TestStuff()
    ID = i.setCall(stuff.add).ID
    assert i.nn(ID, raw=True) == (stuff, "add")
    ns, fn = i.nn(ID)
    assert isinstance(ns, bytes) and fn == "add"
    assert i.getInfo(ID, 'wireVersion') == (ns, fn)
    assert i.nn(ID, raw=True)[0] is stuff


# --- Info: aboutCall --------------------------------------------------------

@pytest.mark.parametrize("pattern, f, args, kw", [
    (r"None\[Not Callable!\]\(\)", None, (), {}),
    (r"^foo\(1\)$", Picklable().foo, (1,), {}),
    (r"^_bar\(1, y=2\)$", _bar, (1,), {'y': 2}),
    (r"^_bar\(y=2\)$", _bar, (), {'y': 2}),
    (r"^some\.name\(a\)$", "some.name", ("a",), {}),
])
def test_aboutCall_text(pattern, f, args, kw):
    assert re.search(pattern, info.Info().setCall(f, args, kw).aboutCall())


def test_aboutCall_empty_without_call():
    assert info.Info().aboutCall() == ""


def test_aboutCall_with_thread():
    text = info.Info(whichThread=True).setCall(_bar, 1).aboutCall()
    assert text == "_bar(1) <Thread: {}>".format(
        threading.current_thread().name)


def test_aboutCall_survives_broken_reprs():
    class Broken:
        def __str__(self):
            raise RuntimeError

        __repr__ = __str__
    text = info.Info().setCall(_bar, Broken(), instance=Broken()).aboutCall()
    assert "unprintable Broken" in text and "unreprable Broken" in text


def test_aboutCall_remembers_old_calls():
    i = info.Info(remember=True)
    IDs, texts = [], []
    for k in range(4):
        IDs.append(i.setCall(_bar, k).ID)
        texts.append(i.aboutCall())
    assert [i.aboutCall(ID) for ID in IDs] == texts
    assert i.aboutCall(IDs[0], nowForget=True) == texts[0]
    assert IDs[0] not in i.pastInfo
    assert i.aboutCall(IDs[0]) == ""


# --- Info: aboutException / aboutFailure -------------------------------------

def test_aboutException_of_the_exception_being_handled():
    i = info.Info().setCall(_divide, (1, 0), {})
    try:
        _divide(1, 0)
    except ZeroDivisionError:
        text = i.aboutException()
    lines = text.split("\n")
    assert lines[0] == "Exception 'division by zero'"
    assert lines[1] == " doing call '_divide(1, 0)'"
    assert "ZeroDivisionError" in text
    assert "return x / y" in text
    assert re.search(r"\n-+\n", text)


def test_aboutException_layout_is_that_of_0_9():
    i = info.Info().setCall(_bar)
    text = i.aboutException(exception=ValueError("a: b\\nc"))
    # Every ':' and every literal backslash-n starts a new line.
    assert ":" not in text and "\\n" not in text
    assert text.startswith("Exception 'a\n b\nc'\n doing call '_bar()'\n")


def test_aboutException_divider_is_capped():
    i = info.Info().setCall(_bar, "x" * 200)
    text = i.aboutException(exception=ValueError("v"))
    dividers = [x for x in text.split("\n") if x and set(x) == {"-"}]
    assert dividers == ["-" * 79]


def test_aboutException_of_a_supplied_exception():
    exception = _raised(_divide, 2, 0)
    text = info.Info().setCall(_divide, (2, 0)).aboutException(
        exception=exception)
    assert "Exception 'division by zero" in text
    assert "return x / y" in text
    assert "ZeroDivisionError" in info.Info().aboutException(
        exception=ZeroDivisionError)


def test_aboutException_remembered_by_ID():
    i = info.Info(remember=True)
    ID = i.setCall(_divide, (1, 0)).ID
    text = i.aboutException(ID, _raised(_divide, 1, 0))
    i.setCall(_bar)
    assert i.aboutException(ID) == text
    assert i.aboutException(ID, nowForget=True) == text
    assert ID not in i.pastInfo


def test_aboutFailure():
    i = info.Info().setCall(_divide, (1, 0))
    failure = Failure(_raised(_divide, 1, 0))
    text = i.aboutFailure(failure)
    assert text.startswith(
        "Failure 'division by zero'\n doing call '_divide(1, 0)'\n")
    assert "ZeroDivisionError" in text


def test_aboutFailure_usable_as_errback():
    i = info.Info().setCall(_divide, (1, 0))
    d = defer.maybeDeferred(_divide, 1, 0).addErrback(i.aboutFailure)
    assert d.result.startswith("Failure 'division by zero'")
