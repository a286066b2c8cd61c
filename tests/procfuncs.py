"""
Functions the process worker tests run in child processes. They live in
an importable module (the child imports it when it unpickles a call) and
import neither Twisted nor the test modules, so that children start fast.
"""
import os
import signal
import sys
import time

#: State kept for the life of one child process (see setGlobal).
_globals = {}
#: How many iterators of ``countingGenerator`` were closed in this child.
_closedIterators = [0]


def inc(x):
    return x + 1


def divide(x, y):
    return x / y


def keywords(*args, **kw):
    """What the function was called with."""
    return args, kw


def pid():
    return os.getpid()


def environment(name):
    """What the child sees: a variable, its cwd and its sys.path."""
    return os.environ.get(name), os.getcwd(), list(sys.path)


def importAndGet(moduleName, attribute):
    """An attribute of a module that only the parent's sys.path finds."""
    module = __import__(moduleName)
    return getattr(module, attribute)


def setGlobal(name, value):
    _globals[name] = value
    return value


def getGlobal(name):
    return _globals.get(name)


def touchThenSleep(path, seconds):
    """Say (by creating ``path``) that the call runs, then sleep."""
    with open(path, "w") as fh:
        fh.write(str(os.getpid()))
    time.sleep(seconds)
    return "slept"


def touchOnceThenSleep(path, seconds):
    """The first run creates ``path`` and sleeps (to be killed); a later
    run, finding ``path``, returns at once."""
    if os.path.exists(path):
        return "retried"
    return touchThenSleep(path, seconds)


def waitForFile(path, deadline=20.0):
    """Block until ``path`` exists (a worker held busy by the test)."""
    end = time.monotonic() + deadline
    while not os.path.exists(path):
        if time.monotonic() > end:
            raise RuntimeError("{} never appeared".format(path))
        time.sleep(0.005)
    return "released"


def touch(path):
    with open(path, "w"):
        pass
    return path


def exitNow(code):
    os._exit(code)


def segfault():
    os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(10)


def corruptReplies():
    """Write garbage to the reply pipe, then return normally."""
    os.write(4, b"\xff" * 64)
    return "garbage sent"


def badBufferFrame():
    """Write a well-formed frame naming a reply ring that does not exist,
    then return normally."""
    import pickle
    import struct
    payload = pickle.dumps((b'r', None, None))
    os.write(4, struct.pack("<BBBBIQI", 1, 10, 0, 0, 0, len(payload), 1) +
             struct.pack("<IIQQ", 99, 0, 0, 64) + payload)
    return "bad frame sent"


def twice(array):
    return array * 2


def mutateAndSum(array):
    """Change the argument in place (a private copy in the child)."""
    total = float(array.sum())
    array[...] = -1
    return total


def describe(array):
    """The array's shape, flags and content, as the child sees them."""
    return (array.shape, bool(array.flags.writeable),
            bool(array.flags.c_contiguous), array.tolist())


def fill(array, value):
    """Write ``value`` into every element, in place; nothing returned."""
    array[...] = value


def sizeOf(data):
    return type(data).__name__, len(data)


def echo(x):
    return x


def makeLock():
    import threading
    return threading.Lock()


def generator(n):
    return (x for x in range(n))


def emptyGenerator():
    return iter(())


def failingGenerator(n):
    """Yields ``n`` items, then raises."""
    yield from range(n)
    raise ValueError("the iterator broke")


def lockGenerator():
    """Yields two numbers, then something that cannot be pickled."""
    import threading
    yield 1
    yield 2
    yield threading.Lock()
    yield 4


def countingGenerator(n):
    """A generator that counts, in this child, how many of its kind were
    closed (dropped by the parent, or finished)."""
    try:
        yield from range(n)
    finally:
        _closedIterators[0] += 1


def closedIterators():
    return _closedIterators[0]


def _universe():
    """The ProcessUniverse serving this child (run as ``__main__``)."""
    return sys.modules["__main__"].ProcessUniverse.serving


def bornArray(nbytes, value):
    """A new array, and where it lies in the reply arena (None if not
    there): ``(array, offset)``."""
    import numpy
    array = numpy.full(nbytes // 8, float(value))
    arena = _universe().replyArena
    base = None if arena is None else arena.address
    return array, None if base is None else array.ctypes.data - base


def handlerName(nbytes):
    """The name of the numpy memory handler of a new array."""
    import numpy
    from numpy._core.multiarray import get_handler_name
    return get_handler_name(numpy.empty(nbytes // 8))


def keepNew(name, nbytes, value):
    """Keep a new array (see setGlobal) and return it too."""
    import numpy
    _globals[name] = numpy.full(nbytes // 8, float(value))
    return _globals[name]


def bump(name):
    """Add one to the array kept as ``name``; its first value."""
    _globals[name] += 1.0
    return float(_globals[name][0])


def temporaries(n):
    """A sum through several large temporary arrays."""
    import numpy
    return float(numpy.sqrt(numpy.arange(n) * 2.0 + 1.0).sum())


def forkAndChurn(nbytes):
    """Fork; the forked copy makes and frees large arrays, among them a
    copy of one this process keeps. What this process holds is intact."""
    import numpy
    kept = numpy.full(nbytes // 8, 4.0)
    pid = os.fork()
    if pid == 0:
        churn = numpy.full(nbytes // 8, 9.0)
        del kept, churn
        os._exit(0)
    os.waitpid(pid, 0)
    fresh = numpy.full(nbytes // 8, 6.0)
    return float(kept.sum()), float(fresh.sum())


def grownAndZeros(nbytes):
    """An array grown in place (numpy's realloc) and a zeroed one (its
    calloc), both large; the zeroed one's memory was used before."""
    import numpy
    for _ in range(3):
        numpy.full(nbytes // 8, 5.0)
    grown = numpy.arange(nbytes // 8, dtype=numpy.float64)
    grown.resize(2 * (nbytes // 8), refcheck=False)
    return grown, numpy.zeros(nbytes // 8)


def churnExpected(seed):
    """What ``churn(seed)`` returns, as ``[(size, value), ...]``."""
    import random
    rng = random.Random(seed)
    sizes = [rng.choice((1 << 16, 1 << 20, 3 << 20, 6 << 20)) // 8
             for _ in range(rng.randint(1, 4))]
    return [(size, float(seed * 10 + k)) for k, size in enumerate(sizes)]


def churn(seed):
    """Arrays of several sizes made, kept across calls, dropped and
    returned at random (the same randomness as ``churnExpected``); a
    kept array is changed later, after it was returned."""
    import random
    import numpy
    kept = _globals.setdefault("churn", [])
    for array in kept:
        array += 1000.0
    out = [numpy.full(size, value)
           for size, value in churnExpected(seed)]
    rng = random.Random(-seed)
    temporary = numpy.ones(rng.choice((1, 1 << 17, 1 << 19)))
    if rng.random() < 0.3:
        kept.append(out[0])
    if len(kept) > 3 or rng.random() < 0.2:
        del kept[:rng.randint(0, len(kept))]
    del temporary
    return out
