"""
Information about callables and what happens to them: ``Info`` describes
calls, exceptions and Failures as text, under unique call IDs.

For development, the ``showResult`` and ``whichThread`` decorators print
each call of a function or method with its (possibly deferred) result.
"""
import copy
import functools
import inspect
import itertools
import pickle
import sys
import threading
import traceback
from contextlib import contextmanager

from twisted.internet import defer
from twisted.python import reflect

__all__ = [
    "hashIt", "showResult", "whichThread", "Converter", "InfoHolder", "Info",
]


def hashIt(*args):
    """
    Return a hash for pretty much any Python object or objects.

    Dicts contribute each of their items in sorted-key order, lists and tuples
    each of their elements with its index. Anything else contributes its
    hash, or the hash of its pickle, or 0. Mixed-type dict keys that cannot
    be sorted raise TypeError.
    """
    total = 0
    for x in args:
        if isinstance(x, dict):
            for k, key in enumerate(sorted(x)):
                total += hashIt(k, key, x[key])
        elif isinstance(x, (list, tuple)):
            for k, value in enumerate(x):
                total += hashIt(k, value)
        else:
            total += _hashOfAnything(x)
    return hash(total)


def _hashOfAnything(x):
    """Return the hash of x, else of its pickle, else 0."""
    try:
        return hash(x)
    except Exception:
        pass
    try:
        return hash(pickle.dumps(x))
    except Exception:
        return 0


def _safeText(x):
    """Return str(x), or a placeholder if its __str__ raises."""
    try:
        return str(x)
    except Exception:
        return "<unprintable {} object>".format(type(x).__name__)


def _safeRepr(x):
    """Return repr(x), or a placeholder if its __repr__ raises."""
    try:
        return repr(x)
    except Exception:
        return "<unreprable {} object>".format(type(x).__name__)


# --- showResult / whichThread ----------------------------------------------

#: Numbers the calls that showResult prints, across all decorated callables.
_showResultCounter = itertools.count(1)
#: The attribute that whichThread sets on the callable it marks.
_WHICH_THREAD = "_asynqueue_whichThread"


def showResult(f):
    """
    Decorate a method or plain function so that each call prints
    ``"NNN: <call> -> <result>"``, following Deferred results.
    """
    return _ResultShower(f)


def whichThread(f):
    """
    Decorate a callable (beneath or above ``showResult``) so that its printed
    call info includes the name of the calling thread.
    """
    setattr(f, _WHICH_THREAD, True)
    return f


class _ResultShower:
    """
    The callable that showResult puts in place of a function or method.

    It is a descriptor, like a function: looked up on an instance it binds
    to it, so the printed call shows ``repr(instance).name(args)``.
    """

    def __init__(self, f):
        functools.update_wrapper(self, f)
        self._instance = None

    def __get__(self, instance, owner=None):
        if instance is None:
            return self
        bound = copy.copy(self)
        bound._instance = instance
        return bound

    def __call__(self, *args, **kw):
        f = self.__wrapped__
        callInfo = "{:03d}: {}".format(
            next(_showResultCounter), self._aboutCall(args, kw))
        if self._instance is not None:
            args = (self._instance,) + args
        result = f(*args, **kw)
        if isinstance(result, defer.Deferred):
            return result.addBoth(_printResult, callInfo)
        return _printResult(result, callInfo)

    def _aboutCall(self, args, kw):
        info = Info(whichThread=getattr(self, _WHICH_THREAD, False))
        return info.setCall(
            self.__wrapped__, args, kw, instance=self._instance).aboutCall()


def _printResult(result, callInfo):
    """Print the call info with its result and pass the result through."""
    resultInfo = _safeText(result)
    if len(callInfo) + len(resultInfo) > 70:
        callInfo += "\n"
    print("\n{} -> {}".format(callInfo, resultInfo))
    return result


# --- Converter --------------------------------------------------------------

class Converter:
    """
    Converts objects to pickles and fully qualified names (FQNs), each
    checked by a round trip; every method returns None on failure.
    """

    def strToFQN(self, x):
        """Return the FQN of the object named by string x, or None if it
        does not import or reflect back into an FQN."""
        try:
            return reflect.fullyQualifiedName(reflect.namedAny(x))
        except Exception:
            return None

    def objToPickle(self, x):
        """Return the pickle bytes of x, or None if it does not pickle and
        unpickle again."""
        try:
            pickled = pickle.dumps(x)
            pickle.loads(pickled)
        except Exception:
            return None
        return pickled

    def objToFQN(self, x):
        """Return the FQN of x, or None if it can't be reflected into an
        FQN that imports again."""
        try:
            fqn = reflect.fullyQualifiedName(x)
            reflect.namedAny(fqn)
        except Exception:
            return None
        return fqn

    def processObject(self, x):
        """Return the pickle of x, failing that its FQN, else None."""
        pickled = self.objToPickle(x)
        if pickled:
            return pickled
        return self.objToFQN(x)


# --- InfoHolder -------------------------------------------------------------

class InfoHolder:
    """
    What ``Info.context`` yields: the info methods of an Info object, bound
    to the ID of one saved call.
    """

    def __init__(self, info, ID):
        self.info = info
        self.ID = ID

    def getInfo(self, name):
        """Return the named info about my call."""
        return self.info.getInfo(self.ID, name)

    def nn(self, raw=False):
        """Return the (namespace, name) tuple of my call."""
        return self.info.nn(self.ID, raw)

    def aboutCall(self):
        """Return text describing my call."""
        return self.info.aboutCall(self.ID)

    def aboutException(self, exception=None):
        """Return text describing an exception raised by my call."""
        return self.info.aboutException(self.ID, exception)

    def aboutFailure(self, failureObj):
        """Return text describing a Failure of my call."""
        return self.info.aboutFailure(failureObj, self.ID)


# --- Info -------------------------------------------------------------------

class Info:
    """
    Provides text (picklable) info about function and method calls.

    Set the call with ``setCall`` (or ``context``), then ask for text about
    it. Each call set gets an ID from a counter, unique for this object.
    With ``remember=True`` the info of each call is kept under its ID
    until ``forgetID``; otherwise nothing is kept beyond the current call.
    With ``whichThread=True`` call info names the thread that set it.
    """

    _AMENDABLE = ("args", "kw", "instance")

    def __init__(self, remember=False, whichThread=False):
        self.cv = Converter()
        self.lastMetaArgs = None
        self.remember = bool(remember)
        if remember:
            self.pastInfo = {}
        self.whichThread = whichThread
        self.callDict = None
        self.currentID = None
        self._IDs = itertools.count(1)

    def setCall(self, *metaArgs, **kw):
        """
        Set my current call and return myself, for chaining.

        ``metaArgs`` is ``(f)``, ``(f, arg-or-list-of-args)`` or
        ``(f, args, kwdict)``; f may also be a string naming a callable.
        The keywords ``args``, ``kw`` and ``instance`` amend the call just
        given or, without metaArgs, the current one. Repeating the last
        metaArgs is a no-op unless I remember calls. Raises ValueError with
        neither metaArgs nor a current call.
        """
        changes = self._amendments(kw)
        if metaArgs:
            if not (changes or self.remember) and self._isLastCall(metaArgs):
                return self
            callDict = self._newCallDict(metaArgs)
        elif self.callDict is not None:
            callDict = dict(self.callDict)
        else:
            raise ValueError(
                "setCall needs a function (or its name) as its first "
                "argument, or a call set before to amend with args, kw or "
                "instance")
        callDict.update(changes)
        self.lastMetaArgs = metaArgs if metaArgs and not changes else None
        self._register(callDict)
        return self

    def _amendments(self, kw):
        """Return the call amendments in kw, rejecting unknown names."""
        unknown = set(kw).difference(self._AMENDABLE)
        if unknown:
            raise TypeError(
                "setCall accepts only the keywords args, kw and instance, "
                "not {}".format(", ".join(sorted(unknown))))
        changes = dict(kw)
        if "args" in changes:
            changes["args"] = _argList(changes["args"])
        return changes

    def _isLastCall(self, metaArgs):
        """Return True if metaArgs equal those of the last setCall."""
        last = self.lastMetaArgs
        if last is None or len(last) != len(metaArgs):
            return False
        return all(_equivalent(a, b) for a, b in zip(metaArgs, last))

    def _newCallDict(self, metaArgs):
        """Return a call dict made from 1-3 metaArgs."""
        if len(metaArgs) > 3:
            raise TypeError(
                "setCall takes at most 3 positional arguments (f, args, kw), "
                "got {:d}".format(len(metaArgs)))
        f = metaArgs[0]
        callDict = {
            "f": f,
            "fs": self._funcText(f),
            "args": _argList(metaArgs[1]) if len(metaArgs) > 1 else [],
            "kw": metaArgs[2] if len(metaArgs) > 2 else {},
            "instance": None,
        }
        if self.whichThread:
            callDict["thread"] = threading.current_thread().name
        return callDict

    def _register(self, callDict):
        """Make callDict my current call, under a new ID."""
        self.callDict = callDict
        self.currentID = next(self._IDs)
        if self.remember:
            self.pastInfo[self.currentID] = {"callDict": callDict}

    @property
    def ID(self):
        """The unique ID of my current call, or None if none is set."""
        return self.currentID

    def forgetID(self, ID):
        """Drop the info kept for call ID (do it when done, or with
        ``remember`` on it piles up)."""
        if self.remember:
            self.pastInfo.pop(ID, None)

    @contextmanager
    def context(self, *metaArgs, **kw):
        """
        Set a call (as ``setCall`` does) and yield an InfoHolder keyed to
        it, valid inside the context even after other calls are set. The ID
        is forgotten on exit. Raises RuntimeError unless I remember calls.
        """
        if not self.remember:
            raise RuntimeError(
                "Info.context needs an Info(remember=True): without it no "
                "call info is kept under an ID")
        ID = self.setCall(*metaArgs, **kw).ID
        try:
            yield InfoHolder(self, ID)
        finally:
            self.forgetID(ID)

    def getInfo(self, ID, name, nowForget=False):
        """
        Return the named info of call ID, or None.

        For ``name == 'callDict'`` with ID None, or when I don't remember
        calls, this is my current call's dict. With ``nowForget``, the info
        (or the current call) is dropped once returned.
        """
        if name == "callDict" and (ID is None or not self.remember):
            return self._currentCallDict(nowForget)
        if not self.remember or ID not in self.pastInfo:
            return None
        entry = self.pastInfo[ID]
        if nowForget:
            del self.pastInfo[ID]
        return entry.get(name)

    def _currentCallDict(self, nowForget):
        """Return my current call dict, dropping it with nowForget."""
        callDict = self.callDict
        if nowForget:
            self.callDict = None
        return callDict

    def saveInfo(self, name, x, ID=None):
        """Keep x as the named info of call ID (default: the current one)
        if I remember calls, and return x."""
        if ID is None:
            ID = self.ID
        if self.remember and ID is not None:
            self.pastInfo.setdefault(ID, {})[name] = x
        return x

    def _memoized(self, name, ID, nowForget, build):
        """Return the named info of call ID, building and saving it if it
        isn't kept yet; with nowForget, forget the call afterwards."""
        if ID is not None:
            kept = self.getInfo(ID, name)
            if kept is not None:
                if nowForget:
                    self.forgetID(ID)
                return kept
        x = build()
        if nowForget:
            self.forgetID(self.ID if ID is None else ID)
            return x
        return self.saveInfo(name, x, ID)

    def nn(self, ID=None, raw=False):
        """
        Return a ``(namespace, name)`` tuple for the current call or call
        ID, suitable for sending to another process.

        For a string f: ``(None, FQN)``. For a bound method: (pickle or FQN
        of its instance, method name). Otherwise ``(None, pickle or FQN of
        f)``; ``(None, None)`` if nothing works. With ``raw``, the instance
        or callable itself takes the place of its pickle or FQN.
        """
        name = "wireVersionRaw" if raw else "wireVersion"
        return self._memoized(
            name, ID, False, lambda: self._namespaceAndName(ID, raw))

    def _namespaceAndName(self, ID, raw):
        """Build the nn tuple of call ID."""
        callDict = self.getInfo(ID, "callDict")
        if not callDict:
            return None, None
        func = callDict["f"]
        if isinstance(func, str):
            return None, self.cv.strToFQN(func)
        if inspect.ismethod(func):
            parent = self._processed(func.__self__, raw)
            if parent is not None:
                return parent, func.__name__
        return None, self._processed(func, raw)

    def _processed(self, x, raw):
        """Return the pickle or FQN of x (x itself if raw), or None."""
        processed = self.cv.processObject(x)
        if processed is None:
            return None
        return x if raw else processed

    def aboutCall(self, ID=None, nowForget=False):
        """
        Return text describing the current call or call ID, in the form
        ``"[repr(instance).]name(a1, a2, k=v)[ <Thread: T>]"``; "" if no
        call is set.
        """
        return self._memoized(
            "aboutCall", ID, nowForget, lambda: self._callText(ID))

    def _callText(self, ID):
        """Build the aboutCall text of call ID."""
        callDict = self.getInfo(ID, "callDict")
        if not callDict:
            return ""
        instance = callDict.get("instance")
        prefix = "" if instance is None else _safeRepr(instance) + "."
        parts = [_safeText(x) for x in callDict["args"]]
        parts.extend(
            "{}={}".format(name, _safeText(value))
            for name, value in callDict["kw"].items())
        text = "{}{}({})".format(
            prefix, callDict.get("fs") or self._funcText(callDict["f"]),
            ", ".join(parts))
        if "thread" in callDict:
            text += " <Thread: {}>".format(callDict["thread"])
        return text

    def aboutException(self, ID=None, exception=None, nowForget=False):
        """
        Return text describing an exception raised by the current call or
        call ID: the exception being handled, or the exception instance
        you supply. The text starts ``"Exception '<message>'"`` and ends
        with the traceback.
        """
        if exception is None:
            exception = sys.exc_info()[1]
        return self._memoized(
            "aboutException", ID, nowForget,
            lambda: self._exceptionText(ID, exception))

    def _exceptionText(self, ID, exception):
        """Build the aboutException text of call ID."""
        if isinstance(exception, type) and issubclass(exception, BaseException):
            exception = exception()
        lines = self._headerLines(
            "Exception '{}'".format(_safeText(exception)), ID)
        if exception is not None:
            lines.append("".join(traceback.format_exception(
                type(exception), exception, exception.__traceback__)))
        return self._formatList(lines)

    def aboutFailure(self, failureObj, ID=None, nowForget=False):
        """
        Return text describing a Twisted Failure of the current call or
        call ID, with its verbose traceback. Usable as an errback.
        """
        return self._memoized(
            "aboutFailure", ID, nowForget,
            lambda: self._failureText(ID, failureObj))

    def _failureText(self, ID, failureObj):
        """Build the aboutFailure text of call ID."""
        lines = self._headerLines(
            "Failure '{}'".format(failureObj.getErrorMessage()), ID)
        lines.append(failureObj.getTraceback(detail="verbose"))
        return self._formatList(lines)

    def _headerLines(self, firstLine, ID):
        """Return the heading lines of an error text: what, doing which
        call, and a dash divider."""
        lines = [firstLine]
        callInfo = self.aboutCall(ID)
        if callInfo:
            lines.append(" doing call '{}':".format(callInfo))
        lines.append("-" * min(79, max(len(x) for x in lines) + 1))
        return lines

    @staticmethod
    def _formatList(lineList):
        """Join the lines, starting a new line at every ':' and every
        literal backslash-n (the 0.9 layout)."""
        lines = []
        for line in lineList:
            for piece in line.split(":"):
                lines.extend(piece.split("\\n"))
        return "\n".join(lines)

    @staticmethod
    def _funcText(func):
        """Return a display name for func (a callable or a string)."""
        if isinstance(func, str):
            return func
        if callable(func):
            return getattr(func, "__name__", None) or _safeText(func)
        return "{}[Not Callable!]".format(_safeText(func))


def _argList(args):
    """Return args as a list or tuple, wrapping a single argument."""
    return args if isinstance(args, (list, tuple)) else [args]


def _equivalent(a, b):
    """Return True if a is b or a == b (False if comparing raises)."""
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:
        return False
