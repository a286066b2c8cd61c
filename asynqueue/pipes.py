"""
The parent's ends of a worker child's two call pipes, watched by the
reactor: it reads what arrives as it arrives and writes without waiting,
leaving to the reactor only what a full pipe cannot take at once.
"""
import os
from collections import deque

from twisted.internet import reactor
from twisted.internet.interfaces import IReadDescriptor, IWriteDescriptor
from zope.interface import implementer

from .child import READ_SIZE

__all__ = ["Channel"]


@implementer(IReadDescriptor)
class Channel:
    """
    The parent's ends of a child's two call pipes, watched by the reactor:
    what arrives goes to ``received``; writes go straight to the pipe and
    only what it cannot take at once waits for the reactor.
    """

    def __init__(self, readFD, writeFD, received):
        self.readFD = readFD
        self.writeFD = writeFD
        self.received = received
        self.outgoing = deque()
        self.closing = False
        self.writeEnd = WriteEnd(self)
        for fd in (readFD, writeFD):
            os.set_blocking(fd, False)
            enlargePipe(fd)
        reactor.addReader(self)

    def fileno(self):
        return self.readFD if self.readFD is not None else -1

    def logPrefix(self):
        return "asynqueue.process"

    def doRead(self):
        """Read what the child wrote (all of it, if the pipe is closing)."""
        try:
            data = os.read(self.readFD, READ_SIZE)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:
            reactor.removeReader(self)
            return None
        self.received(data)
        return None

    def drain(self):
        """Read everything left in the pipe (the child has exited)."""
        while self.readFD is not None:
            try:
                data = os.read(self.readFD, READ_SIZE)
            except OSError:
                return
            if not data:
                return
            self.received(data)

    def write(self, data):
        """Write now, as far as the pipe takes it; the rest later (nothing,
        once writing is being closed)."""
        if self.writeFD is None or self.closing:
            return
        if self.outgoing:
            self.outgoing.append(memoryview(data))
            return
        try:
            written = os.write(self.writeFD, data)
        except BlockingIOError:
            written = 0
        except OSError:
            return
        if written < len(data):
            self.outgoing.append(memoryview(data)[written:])
            reactor.addWriter(self.writeEnd)

    def flushOutgoing(self):
        """The pipe can take more: write what waits; True when done."""
        while self.outgoing:
            chunk = self.outgoing[0]
            try:
                written = os.write(self.writeFD, chunk)
            except BlockingIOError:
                return False
            except OSError:
                self.outgoing.clear()
                return True
            if written < len(chunk):
                self.outgoing[0] = chunk[written:]
                return False
            self.outgoing.popleft()
        return True

    def connectionLost(self, reason):
        pass

    def closeWriting(self):
        """No more calls: the child sees the end of its input once what
        waits to be written is."""
        self.closing = True
        if not self.outgoing:
            self._closeWriteFD()

    def _closeWriteFD(self):
        """Stop writing, dropping what waits, and close the write end."""
        if self.writeEnd in reactor.getWriters():
            reactor.removeWriter(self.writeEnd)
        self.outgoing.clear()
        if self.writeFD is not None:
            os.close(self.writeFD)
            self.writeFD = None

    def close(self):
        """Stop watching and close both ends."""
        if self in reactor.getReaders():
            reactor.removeReader(self)
        self._closeWriteFD()
        if self.readFD is not None:
            os.close(self.readFD)
            self.readFD = None


@implementer(IWriteDescriptor)
class WriteEnd:
    """The write end of a channel, watched only while writes wait."""

    def __init__(self, channel):
        self.channel = channel

    def fileno(self):
        return self.channel.writeFD if self.channel.writeFD is not None \
            else -1

    def logPrefix(self):
        return "asynqueue.process"

    def doWrite(self):
        channel = self.channel
        if channel.writeFD is None or channel.flushOutgoing():
            reactor.removeWriter(self)
            if channel.closing:
                channel._closeWriteFD()

    def connectionLost(self, reason):
        pass


def enlargePipe(fd):
    """Give a pipe a 1 MiB buffer where the system allows (Linux)."""
    import fcntl
    setSize = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setSize is not None:
        try:
            fcntl.fcntl(fd, setSize, 1 << 20)
        except OSError:
            pass
