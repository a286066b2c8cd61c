"""
Tests for asynqueue.util: pickling helpers, callAfterDeferred, killProcess,
ProcessProtocol, DeferredTracker, DeferredLock, CallRunner and the test
fixtures shipped in the module.
"""
import io
import logging
import os
import pathlib
import signal
import subprocess
import sys
import threading
from collections import deque

import pytest
from hypothesis import given, settings, strategies as st
from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from asynqueue import util

HAVE_ITERATION = (
    pathlib.Path(util.__file__).with_name("iteration.py").exists())
needsIteration = pytest.mark.skipif(
    not HAVE_ITERATION, reason="asynqueue/iteration.py not written yet")


class Picklable:
    """A picklable object with state, compared by value."""

    def __init__(self):
        self.x = 0

    def foo(self, x):
        self.x += x

    def __eq__(self, other):
        return isinstance(other, Picklable) and other.x == self.x


def _divide(x, y):
    return x / y


def _fired(d):
    """Return the result of an already-fired Deferred."""
    results = []
    d.addBoth(results.append)
    assert results, "Deferred has not fired"
    return results[0]


# --- o2p / p2o --------------------------------------------------------------

def test_pickling_round_trip():
    pObj = Picklable()
    pObj.foo(3.2)
    pObj.foo(1.2)
    for obj in [None, "Some text!", 37311, -1.37, Exception, pObj, [1], {2: 3}]:
        pickled = util.o2p(obj)
        assert isinstance(pickled, bytes)
        assert util.p2o(pickled) == obj
    assert util.p2o(util.o2p(pObj)).x == pytest.approx(4.4)


@pytest.mark.parametrize("empty", [[], (), {}])
def test_o2p_empty_containers_give_empty_bytes(empty):
    assert util.o2p(empty) == b""


def test_p2o_default_object_is_returned_itself():
    default = []
    assert util.p2o(b"", default) is default
    assert util.p2o(b"") is None
    assert util.p2o(None, default) is default


# --- callAfterDeferred ------------------------------------------------------

class Namespace:
    pass


def test_callAfterDeferred_without_attribute_calls_now():
    ns = Namespace()
    assert _fired(util.callAfterDeferred(ns, 'd', _divide, 6, y=3)) == 2
    ns.d = None
    assert _fired(util.callAfterDeferred(ns, 'd', _divide, 6, 2)) == 3


def test_callAfterDeferred_after_fired_deletes_and_calls():
    ns = Namespace()
    ns.d = defer.succeed("ready")
    assert _fired(util.callAfterDeferred(ns, 'd', _divide, 6, 2)) == 3
    assert not hasattr(ns, 'd')


def test_callAfterDeferred_waits_and_swallows_the_value():
    ns = Namespace()
    ns.d = original = defer.Deferred()
    calls = []
    d2 = util.callAfterDeferred(ns, 'd', lambda x: calls.append(x) or x, 5)
    assert calls == [] and not d2.called
    original.callback("ready value")
    assert calls == [5]
    assert _fired(d2) == 5
    assert not hasattr(ns, 'd')
    assert _fired(original) is None


def test_callAfterDeferred_follows_deferred_results():
    ns = Namespace()
    inner = defer.Deferred()
    d2 = util.callAfterDeferred(ns, 'd', lambda: inner)
    assert not d2.called
    inner.callback(7)
    assert _fired(d2) == 7


def test_callAfterDeferred_passes_on_failure_without_calling():
    ns = Namespace()
    ns.d = defer.Deferred()
    calls = []
    d2 = util.callAfterDeferred(ns, 'd', calls.append, 1)
    ns.d.errback(RuntimeError("not ready"))
    failure = _fired(d2)
    assert failure.check(RuntimeError) and calls == []


def test_callAfterDeferred_call_errors_become_failures():
    failure = _fired(util.callAfterDeferred(Namespace(), 'd', _divide, 1, 0))
    assert failure.check(ZeroDivisionError)


# --- killProcess ------------------------------------------------------------

PYTHON = sys.executable
READY_THEN_SLEEP = (
    "import signal, sys, time\n"
    "{ignore}print('ready', flush=True)\n"
    "time.sleep({seconds})\n")


def _childScript(ignoreTerm=False, seconds=60):
    ignore = "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" \
        if ignoreTerm else ""
    return READY_THEN_SLEEP.format(ignore=ignore, seconds=seconds)


class KillProcessTests(unittest.TestCase):
    """killProcess on children (ours and the reactor's) and non-children."""

    def startChild(self, **kw):
        """Start a Python child, wait until it says it's ready (so any
        signal handler is installed), and make sure it goes away."""
        proc = subprocess.Popen(
            [PYTHON, "-c", _childScript(**kw)], stdout=subprocess.PIPE)
        self.addCleanup(self._endChild, proc)
        self.assertEqual(proc.stdout.readline().strip(), b"ready")
        return proc

    @staticmethod
    def _endChild(proc):
        proc.stdout.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    def assertReaped(self, pid):
        """No zombie: the child is gone and already waited for."""
        self.assertRaises(ChildProcessError, os.waitpid, pid, os.WNOHANG)

    @defer.inlineCallbacks
    def test_kill_running_child(self):
        proc = self.startChild()
        wasAlive = yield util.killProcess(proc.pid)
        self.assertTrue(wasAlive)
        self.assertReaped(proc.pid)
        wasAlive = yield util.killProcess(proc.pid)
        self.assertFalse(wasAlive)

    @defer.inlineCallbacks
    def test_kill_short_lived_child_ignoring_SIGTERM(self):
        # It ignores SIGTERM but ends on its own within the grace period.
        proc = self.startChild(ignoreTerm=True, seconds=0.3)
        wasAlive = yield util.killProcess(proc.pid)
        self.assertTrue(wasAlive)
        self.assertReaped(proc.pid)

    @defer.inlineCallbacks
    def test_SIGKILL_after_grace_period(self):
        self.patch(util, "TERM_GRACE_SECONDS", 0.05)
        proc = self.startChild(ignoreTerm=True)
        wasAlive = yield util.killProcess(proc.pid)
        self.assertTrue(wasAlive)
        self.assertReaped(proc.pid)
        self.assertEqual(proc.wait(), 0)  # status already taken by us

    @defer.inlineCallbacks
    def test_exited_child_is_reaped_not_killed(self):
        proc = subprocess.Popen([PYTHON, "-c", "pass"])
        self.addCleanup(proc.wait)
        # Wait for the exit without reaping: the child is now a zombie.
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        wasAlive = yield util.killProcess(proc.pid)
        self.assertFalse(wasAlive)
        self.assertReaped(proc.pid)

    @defer.inlineCallbacks
    def test_kill_non_child(self):
        # A grandchild: its parent, the shell, is gone before we kill it.
        script = "sleep 60 >/dev/null 2>&1 & echo $!"
        pid = int(subprocess.run(
            ["sh", "-c", script], capture_output=True, check=True).stdout)
        self.addCleanup(self._killQuietly, pid)
        self.assertRaises(ChildProcessError, os.waitpid, pid, os.WNOHANG)
        wasAlive = yield util.killProcess(pid)
        self.assertTrue(wasAlive)

    @staticmethod
    def _killQuietly(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    @defer.inlineCallbacks
    def test_kill_reactor_child_leaves_reaping_to_reactor(self):
        ended = defer.Deferred()

        class Protocol(util.ProcessProtocol):
            def processEnded(self, reason):
                super().processEnded(reason)
                ended.callback(reason.value)

        pp = Protocol()
        reactor.spawnProcess(
            pp, PYTHON, [PYTHON, "-c", _childScript()], env=os.environ)
        self.assertEqual((yield pp.d), b"ready")
        wasAlive = yield util.killProcess(pp.pid)
        self.assertTrue(wasAlive)
        reason = yield ended
        self.assertEqual(reason.signal, signal.SIGTERM)
        self.assertReaped(pp.pid)

    @defer.inlineCallbacks
    def test_fallback_without_pidfd(self):
        self.patch(util, "_usePidfd", False)
        self.patch(util, "TERM_GRACE_SECONDS", 0.05)
        proc = self.startChild(ignoreTerm=True)
        wasAlive = yield util.killProcess(proc.pid)
        self.assertTrue(wasAlive)
        self.assertReaped(proc.pid)
        wasAlive = yield util.killProcess(proc.pid)
        self.assertFalse(wasAlive)

    def test_bad_pids_refused(self):
        for pid in (0, -1, os.getpid(), "12", None, True):
            self.assertRaises(ValueError, util.killProcess, pid)


# --- ProcessProtocol --------------------------------------------------------

class ProcessProtocolTests(unittest.TestCase):

    def spawn(self, script, stopper=None):
        """Spawn a Python child; return its protocol and D→processEnded."""
        ended = defer.Deferred()

        class Protocol(util.ProcessProtocol):
            def processEnded(self, reason):
                super().processEnded(reason)
                ended.callback(None)

        pp = Protocol(stopper)
        transport = reactor.spawnProcess(
            pp, PYTHON, [PYTHON, "-c", script], env=os.environ)
        return pp, transport, ended

    @defer.inlineCallbacks
    def test_first_stdout_chunk_stderr_and_stopper(self):
        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        stopped = []
        # Later output waits until the parent has seen the first chunk.
        script = (
            "import sys\n"
            "sys.stderr.write('oops\\n'); sys.stderr.flush()\n"
            "sys.stdout.write('  hello  \\n'); sys.stdout.flush()\n"
            "sys.stdin.read()\n"
            "sys.stdout.write('more\\n')\n")
        pp, transport, ended = self.spawn(script, stopped.append)
        pid = transport.pid  # the transport forgets it when the process ends
        self.assertEqual(pp.pid, pid)
        self.assertEqual((yield pp.d), b"hello")
        transport.closeStdin()
        yield ended  # "more" came too: d fired only once, or trial errs
        self.assertIn("\nERROR: oops", stdout.getvalue())
        self.assertEqual(stopped, [pid])

    @defer.inlineCallbacks
    def test_without_stopper(self):
        pp, transport, ended = self.spawn("print('   '); print('x')")
        self.assertEqual((yield pp.d), b"x")
        yield ended
        self.assertIsNone(pp.stopper)


# --- DeferredTracker --------------------------------------------------------

def _trackerWith(N):
    """Return a tracker on a task.Clock and N tracked, unfired Deferreds."""
    dt = util.DeferredTracker()
    dt.clock = task.Clock()
    return dt, [dt.put(defer.Deferred()) for _ in range(N)]


def test_tracker_keeps_compatibility_arguments():
    dt = util.DeferredTracker(interval=0.1, backoff=1.2)
    assert (dt.interval, dt.backoff, dt.dCount) == (0.1, 1.2, 0)


def test_tracker_immediate_when_empty():
    dt = util.DeferredTracker()
    assert dt.notWaiting()
    assert _fired(dt.deferToAll()) is True
    assert _fired(dt.deferToAny()) is True
    assert _fired(dt.deferUntilFewer(1)) is True


def test_tracker_put_is_transparent():
    dt = util.DeferredTracker()
    d = defer.Deferred()
    assert dt.put(d) is d
    assert dt.dCount == 1 and not dt.notWaiting()
    d.callback("value")
    assert _fired(d) == "value"
    failing = dt.put(defer.Deferred())
    failing.errback(RuntimeError("x"))
    assert _fired(failing).check(RuntimeError)
    assert dt.dCount == 0


def test_tracker_add_and_remove_waits():
    dt = util.DeferredTracker()
    dt.addWait()
    dt.addWait()
    waiter = dt.deferToAll()
    dt.removeWait()
    assert not waiter.called
    dt.removeWait()
    assert _fired(waiter) is True
    dt.removeWait()
    assert dt.dCount == 0


def test_deferToAll_fires_after_the_last():
    dt, ds = _trackerWith(3)
    waiter = dt.deferToAll()
    for d in ds[:-1]:
        d.callback(None)
        assert not waiter.called
    ds[-1].callback(None)
    assert _fired(waiter) is True


def test_deferToAll_runs_after_the_tracked_callbacks():
    dt = util.DeferredTracker()
    flags = []
    d = defer.Deferred().addCallback(lambda _: flags.append("tracked"))
    dt.put(d)
    dt.deferToAll().addCallback(lambda _: flags.append("waiter"))
    d.callback(None)
    assert flags == ["tracked", "waiter"]


def test_deferToAny_fires_after_the_first():
    dt, ds = _trackerWith(3)
    waiter = dt.deferToAny()
    ds[1].callback(None)
    assert _fired(waiter) is True


def test_deferToAny_count_is_frozen():
    dt, ds = _trackerWith(2)
    waiter = dt.deferToAny()
    dt.put(defer.Deferred())
    ds[0].callback(None)
    assert not waiter.called
    ds[1].callback(None)
    assert _fired(waiter) is True


def test_deferUntilFewer():
    dt, ds = _trackerWith(5)
    waiter = dt.deferUntilFewer(3)
    ds[0].callback(None)
    ds[1].callback(None)
    assert not waiter.called
    ds[2].callback(None)
    assert _fired(waiter) is True
    assert dt.dCount == 2
    assert _fired(dt.deferUntilFewer(3)) is True


def test_quitWaiting_releases_everyone_for_good():
    dt, ds = _trackerWith(2)
    waiters = [dt.deferToAll(), dt.deferToAny(), dt.deferUntilFewer(1)]
    dt.quitWaiting()
    assert [_fired(w) for w in waiters] == [True] * 3
    assert dt.dCount is None and dt.notWaiting()
    dt.addWait()
    dt.put(defer.Deferred())
    assert dt.dCount is None
    assert _fired(dt.deferToAny()) is True
    ds[0].callback(None)


def test_tracker_timeouts_fire_False_and_leave_no_timer():
    dt, ds = _trackerWith(2)
    waiters = [dt.deferToAll(timeout=1), dt.deferToAny(timeout=2),
               dt.deferUntilFewer(1, timeout=3)]
    dt.clock.advance(3)
    assert [_fired(w) for w in waiters] == [False] * 3
    assert dt.clock.getDelayedCalls() == []
    assert dt._waiters == {}
    ds[0].callback(None)
    ds[1].callback(None)


def test_tracker_timer_cancelled_when_wait_completes():
    dt, ds = _trackerWith(1)
    waiter = dt.deferToAll(timeout=10)
    assert len(dt.clock.getDelayedCalls()) == 1
    ds[0].callback(None)
    assert _fired(waiter) is True
    assert dt.clock.getDelayedCalls() == []


def test_tracker_zero_timeout_is_a_timeout():
    dt, ds = _trackerWith(1)
    waiter = dt.deferToAll(timeout=0)
    dt.clock.advance(0)
    assert _fired(waiter) is False
    ds[0].callback(None)


def test_tracker_cancelled_waiter_is_forgotten():
    dt, ds = _trackerWith(1)
    waiter = dt.deferToAll(timeout=5)
    waiter.cancel()
    assert _fired(waiter).check(defer.CancelledError)
    assert dt._waiters == {} and dt.clock.getDelayedCalls() == []
    ds[0].callback(None)


def test_tracker_waiter_callbacks_may_reenter():
    dt, ds = _trackerWith(2)
    log = []

    def again(_):
        log.append("first")
        dt.put(defer.Deferred())
        dt.deferUntilFewer(2).addCallback(lambda _: log.append("second"))

    dt.deferToAny().addCallback(again)
    ds[0].callback(None)
    assert log == ["first"]
    ds[1].callback(None)
    assert log == ["first", "second"]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12).flatmap(lambda n: st.tuples(
    st.permutations(range(n)), st.integers(1, n))))
def test_tracker_waiters_fire_exactly_when_due(case):
    order, N = case
    dt, ds = _trackerWith(len(order))
    fewer = dt.deferUntilFewer(N)
    allDone = dt.deferToAll()
    anyDone = dt.deferToAny()
    for k, index in enumerate(order):
        assert fewer.called == (len(order) - k < N)
        assert not allDone.called
        assert anyDone.called == (k > 0)
        ds[index].callback(None)
    assert fewer.called and allDone.called and anyDone.called
    assert dt._waiters == {}


class DeferredTrackerReactorTests(unittest.TestCase):
    """With the real reactor: no delayed call is left behind."""

    @defer.inlineCallbacks
    def test_completed_waits_cancel_their_timers(self):
        dt = util.DeferredTracker()
        for k in range(3):
            dt.put(task.deferLater(reactor, 0, lambda: None))
        results = yield defer.gatherResults([
            dt.deferToAny(timeout=60), dt.deferUntilFewer(2, timeout=60),
            dt.deferToAll(timeout=60)])
        self.assertEqual(results, [True, True, True])

    @defer.inlineCallbacks
    def test_timeout_on_the_reactor(self):
        dt = util.DeferredTracker()
        dt.put(defer.Deferred())
        self.assertFalse((yield dt.deferToAll(timeout=0.01)))


# --- DeferredLock -----------------------------------------------------------

def _acquireAll(lock, spec):
    """Acquire for each (name, vip) of spec; return the order of grants."""
    granted = []
    for name, vip in spec:
        lock.acquire(vip).addCallback(lambda _, n=name: granted.append(n))
    return granted


def test_lock_is_a_twisted_DeferredLock():
    lock = util.DeferredLock(allowZombies=True)
    assert isinstance(lock, defer.DeferredLock)
    assert (lock.N_vips, lock.stoppers, lock.running) == (0, [], True)


def test_lock_excludes_in_order():
    lock = util.DeferredLock()
    assert _fired(lock.acquire()) is lock
    granted = _acquireAll(lock, [("a", False), ("b", False)])
    assert granted == []
    lock.release()
    assert granted == ["a"]
    lock.release()
    assert granted == ["a", "b"]
    lock.release()
    assert not lock.locked


def test_vip_waiters_go_first_in_their_own_order():
    lock = util.DeferredLock()
    lock.acquire()
    granted = _acquireAll(lock, [
        ("a", False), ("v1", True), ("b", False), ("v2", True)])
    assert lock.N_vips == 2
    for _ in range(4):
        lock.release()
    assert granted == ["v1", "v2", "a", "b"]
    assert lock.N_vips == 0


def test_vip_when_unlocked_is_immediate():
    lock = util.DeferredLock()
    assert _fired(lock.acquire(vip=True)) is lock
    assert lock.N_vips == 0 and lock.locked


def test_cancelled_vip_waiter_keeps_the_order():
    lock = util.DeferredLock()
    lock.acquire()
    vip = lock.acquire(vip=True)
    granted = _acquireAll(lock, [("a", False)])
    vip.cancel()
    vip.addErrback(lambda f: f.trap(defer.CancelledError))
    assert lock.N_vips == 0
    grantedVip = _acquireAll(lock, [("v", True)])
    lock.release()
    assert (grantedVip, granted) == (["v"], [])
    lock.release()
    assert granted == ["a"]


def test_acquireAndRelease():
    lock = util.DeferredLock()
    lock.acquire()
    d = lock.acquireAndRelease(vip=True)
    assert not d.called
    lock.release()
    assert d.called and not lock.locked


def test_run_from_the_base_class():
    lock = util.DeferredLock()
    assert _fired(lock.run(_divide, 6, 3)) == 2
    assert not lock.locked


def test_context_releases_after_the_block():
    lock = util.DeferredLock()
    with lock.context() as d:
        assert _fired(d) is lock and lock.locked
    assert not lock.locked


def test_context_releases_on_exception():
    lock = util.DeferredLock()
    with pytest.raises(KeyError):
        with lock.context(vip=True):
            raise KeyError
    assert not lock.locked


def test_context_left_before_acquiring_releases_when_granted():
    lock = util.DeferredLock()
    lock.acquire()
    with pytest.raises(KeyError):
        with lock.context():
            raise KeyError
    assert lock.locked
    lock.release()
    assert not lock.locked
    assert _fired(lock.acquire()) is lock


def test_context_in_inlineCallbacks():
    lock = util.DeferredLock()
    lock.acquire()
    inside = []

    @defer.inlineCallbacks
    def user():
        with lock.context() as d:
            yield d
            inside.append(lock.locked)

    done = user()
    lock.release()
    assert _fired(done) is None
    assert inside == [True] and not lock.locked


def test_stop_when_unlocked_runs_stoppers_in_order():
    lock = util.DeferredLock()
    calls = []
    pending = defer.Deferred()
    lock.addStopper(lambda: calls.append("first") or pending)
    lock.addStopper(calls.append, "second")
    lock.addStopper(lambda **kw: calls.append(kw), third=3)
    stopped = lock.stop()
    assert calls == ["first"] and not stopped.called
    pending.callback(None)
    assert calls == ["first", "second", {'third': 3}]
    assert _fired(stopped) is None
    assert not lock.running and not lock.locked


def test_after_stop_acquire_is_immediate_and_release_a_noop():
    lock = util.DeferredLock()
    _fired(lock.stop())
    for vip in (False, True):
        assert _fired(lock.acquire(vip)) is lock
        assert _fired(lock.acquire(vip)) is lock
    lock.release()
    lock.release()
    assert _fired(lock.acquireAndRelease()) is None
    with lock.context() as d:
        assert _fired(d) is lock


def test_stop_while_held_waits_for_release_without_deadlock():
    lock = util.DeferredLock()
    lock.acquire()
    calls = []
    lock.addStopper(calls.append, "stopper")
    stopped = lock.stop()
    assert not stopped.called and calls == []
    lock.release()
    assert calls == ["stopper"]
    assert _fired(stopped) is None


def test_waiters_before_stop_go_first_later_ones_after():
    lock = util.DeferredLock()
    lock.acquire()
    events = []
    earlier = _acquireAll(lock, [("a", False), ("v", True)])
    lock.addStopper(events.append, "stoppers")
    stopped = lock.stop()
    later = _acquireAll(lock, [("late", False), ("lateVip", True)])
    lock.release()
    assert earlier == ["v"] and events == [] and later == []
    lock.release()
    assert earlier == ["v", "a"] and events == [] and later == []
    lock.release()
    assert events == ["stoppers"]
    assert later == ["late", "lateVip"]
    assert stopped.called


def test_cancelled_acquire_during_stop_is_forgotten():
    lock = util.DeferredLock()
    lock.acquire()
    lock.stop()
    late = lock.acquire()
    late.cancel()
    late.addErrback(lambda f: f.trap(defer.CancelledError))
    lock.release()
    assert lock._afterStop == []


def test_stop_twice():
    lock = util.DeferredLock()
    lock.acquire()
    pending = defer.Deferred()
    lock.addStopper(lambda: pending)
    first, second = lock.stop(), lock.stop()
    lock.release()
    assert not first.called and not second.called
    pending.callback(None)
    assert _fired(first) is None and _fired(second) is None
    assert _fired(lock.stop()) is None


def test_cancelling_stop_notice_does_not_break_stop():
    lock = util.DeferredLock()
    lock.acquire()
    notice = lock.stop()
    notice.cancel()
    notice.addErrback(lambda f: f.trap(defer.CancelledError))
    other = lock.stop()
    lock.release()
    assert _fired(other) is None


def test_failing_stopper_is_logged_and_stop_completes(caplog):
    lock = util.DeferredLock()
    calls = []
    lock.addStopper(_divide, 1, 0)
    lock.addStopper(calls.append, "after")
    with caplog.at_level(logging.ERROR, logger="asynqueue"):
        stopped = lock.stop()
    assert _fired(stopped) is None
    assert calls == ["after"]
    assert "ZeroDivisionError" in caplog.text


# --- CallRunner -------------------------------------------------------------

def _generate(N):
    yield from range(N)


def _seesKeywords(**kw):
    return kw


def test_callrunner_result():
    runner = util.CallRunner()
    assert runner((_divide, (6, 3), {})) == (b'r', 2)
    assert runner((_divide, [6], {'y': 2})) == (b'r', 3)


def test_callrunner_error_text():
    status, text = util.CallRunner()((_divide, (1, 0), {}))
    assert status == b'e'
    assert "Exception 'division by zero" in text
    assert "_divide(1, 0)" in text


def test_callrunner_lets_interpreter_exits_through():
    def interrupt():
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        util.CallRunner()((interrupt, (), {}))


def test_callrunner_pops_raw_without_touching_callers_kw():
    kw = {'raw': True, 'a': 1}
    assert util.CallRunner()((_seesKeywords, (), kw)) == (b'r', {'a': 1})
    assert kw == {'raw': True, 'a': 1}


def test_callrunner_raw_returns_iterators_as_they_are():
    status, result = util.CallRunner(raw=True)((_generate, (3,), {}))
    assert status == b'r' and list(result) == [0, 1, 2]
    status, result = util.CallRunner()((_generate, (3,), {'raw': True}))
    assert status == b'r' and list(result) == [0, 1, 2]


@needsIteration
def test_callrunner_iterator_status():
    status, result = util.CallRunner()((_generate, (3,), {}))
    assert status == b'i' and list(result) == [0, 1, 2]
    runner = util.CallRunner(raw=True)
    assert runner((_generate, (2,), {'raw': False}))[0] == b'i'
    assert runner((_generate, (2,), {'raw': None}))[0] == b'r'
    assert util.CallRunner()((list, ([1, 2],), {})) == (b'r', [1, 2])


def test_callrunner_stats():
    assert not hasattr(util.CallRunner(), 'callTimes')
    runner = util.CallRunner(callStats=True)
    results = [runner((_divide, (x, 2), {})) for x in range(1000, 2000)]
    runner((_divide, (1, 0), {}))
    assert results[0] == (b'r', 500)
    assert isinstance(runner.callTimes, deque)
    assert runner.callTimes.maxlen == util.CallRunner.maxCallTimes == 100000
    assert len(runner.callTimes) == 1000
    assert all(t >= 0 for t in runner.callTimes)


def test_callrunner_stats_are_bounded(monkeypatch):
    monkeypatch.setattr(util.CallRunner, "maxCallTimes", 10)
    runner = util.CallRunner(callStats=True)
    for x in range(25):
        runner((_divide, (x, 1), {}))
    assert len(runner.callTimes) == 10


def test_callrunner_reactor_needs_raw():
    with pytest.raises(ValueError):
        util.CallRunner(reactor=reactor)
    util.CallRunner(raw=True, reactor=reactor)


class CallRunnerReactorTests(unittest.TestCase):
    """Reactor mode: calls from another thread run in the reactor thread."""

    def setUp(self):
        self.runner = util.CallRunner(raw=True, reactor=reactor)

    @defer.inlineCallbacks
    def test_runs_in_reactor_thread_and_waits_for_deferreds(self):
        reactorThread = threading.current_thread()
        seen = []

        def inReactor(x):
            seen.append(threading.current_thread())
            return task.deferLater(reactor, 0, lambda: 2 * x)

        result = yield threads.deferToThread(
            self.runner, (inReactor, (21,), {}))
        self.assertEqual(result, (b'r', 42))
        self.assertEqual(seen, [reactorThread])

    @defer.inlineCallbacks
    def test_errors(self):
        status, text = yield threads.deferToThread(
            self.runner, (_divide, (1, 0), {}))
        self.assertEqual(status, b'e')
        self.assertIn("Exception 'division by zero", text)
        self.assertIn("_divide(1, 0)", text)

    def test_refuses_to_deadlock_in_reactor_thread(self):
        status, text = self.runner((_divide, (1, 1), {}))
        self.assertEqual(status, b'e')
        self.assertIn("deadlock", text)


# --- Test fixtures ----------------------------------------------------------

def test_testFunction_and_TestStuff():
    assert util.testFunction(3) == 6
    stuff = util.TestStuff()
    assert util.TestStuff.divide(1, 2) == 0.5
    assert stuff.add(2, 3) == 5
    assert stuff.accumulate(2) == 2 and stuff.accumulate(3) == 5
    assert stuff.setStuff(3, 2) is stuff
    assert list(stuff.stufferator()) == ["xxx", "xxx"]
    assert stuff.blockingTask(4, 0) == 8
