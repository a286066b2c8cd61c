"""
The functions the benchmarks send to workers: importable by every peer's
worker processes, and trivial, so that what is measured is the transport.
"""


def inc(x):
    return x + 1


def negate(array):
    """A fresh array the size of the argument, so it travels both ways."""
    import numpy
    return numpy.negative(array)


def doubleInPlace(array):
    """Work on a SharedArray where it lies; nothing travels back."""
    import numpy
    numpy.multiply(array, 2, out=array)


def count(n):
    """A generator of ``n`` small items, left in the worker and fetched
    in batches."""
    return iter(range(n))


def spin(n):
    """Pure-Python busy work of about ``n`` loop turns."""
    total = 0
    for i in range(n):
        total += i
    return total
