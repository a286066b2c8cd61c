"""
Test support for the wire module, kept from AsynQueue 0.9 for
compatibility: ``TestMethods`` and the ``TestUniverse`` that serves them.
Not part of the documented API.
"""
import time

from .wire import WireWorkerUniverse

__all__ = ["TestMethods", "TestUniverse"]


class TestMethods:
    """Methods for the wire tests to call remotely."""

    chars = "abcdefghijklmnopqrst"

    def add(self, x, y):
        return x + y

    def divide(self, x, y):
        return x / y

    def setStuff(self, N1, N2):
        """Make ``stuff`` N1 bytes strings of length N2, cycling through
        ``chars``."""
        line = "".join(
            self.chars[k % len(self.chars)] for k in range(N2)).encode()
        self.stuff = [line] * N1

    def getStuff(self):
        return self.stuff

    def stuffSize(self):
        return len(self.stuff)

    def stufferator(self):
        for chunk in self.stuff:
            yield chunk

    def blockingTask(self, x, delay):
        """Sleep for ``delay`` seconds (run it with thread=True), then
        return 2*x."""
        time.sleep(delay)
        return 2 * x


class TestUniverse(TestMethods, WireWorkerUniverse):
    """A WireWorkerUniverse serving TestMethods."""
