"""
The base of the process worker tests: makes ProcessQueues, shuts them down
after each test and then checks that nothing is left behind (no shared
memory segment of the test, no child process). Trial's dirty-reactor check
adds that no reader, writer or timer is left.
"""
import os
import shutil
import tempfile

from twisted.internet import defer
from twisted.trial import unittest

from asynqueue import shm
from asynqueue.process import ProcessQueue
from support import collect, waitUntil  # noqa: F401 (for the process tests)

#: The longest a test waits for a condition (a liveness bound, seconds).
DEADLINE = 10.0


def childPIDs():
    """The IDs of this process's children (zombies included)."""
    me = os.getpid()
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and parentOf(int(name)) == me:
            found.append(int(name))
    return found


def parentOf(pid):
    """The parent ID of ``pid``, or None if there is no such process."""
    try:
        with open("/proc/{}/stat".format(pid)) as fh:
            stat = fh.read()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def isRunning(pid):
    """Whether ``pid`` is a process that has not ended (a zombie has)."""
    try:
        with open("/proc/{}/stat".format(pid)) as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def shmExists(name):
    return os.path.exists("/dev/shm" + name)


class ProcessTestCase(unittest.TestCase):
    """Makes ProcessQueues; after each test shuts them down and checks that
    every shared memory segment made meanwhile is gone and no child
    process is left."""

    timeout = 30

    def setUp(self):
        self.queues = []
        self.segmentNames = []
        create = shm.Segment.create.__func__
        segmentNames = self.segmentNames

        def recordingCreate(cls, size):
            segment = create(cls, size)
            segmentNames.append(segment.name)
            return segment
        self.patch(shm.Segment, "create", classmethod(recordingCreate))

    def makeQueue(self, N=1, **kw):
        kw.setdefault("returnFailure", True)
        q = ProcessQueue(N, **kw)
        self.queues.append(q)
        return q

    def tmpPath(self):
        """A path in a fresh temporary directory, removed after the test."""
        directory = tempfile.mkdtemp(prefix="aq-test-")
        self.addCleanup(shutil.rmtree, directory, True)
        return os.path.join(directory, "marker")

    @defer.inlineCallbacks
    def tearDown(self):
        yield defer.gatherResults([q.shutdown() for q in self.queues])
        self.assertNothingLeft()

    def assertNothingLeft(self):
        """No segment of this test in /dev/shm, no child process."""
        left = [name for name in self.segmentNames if shmExists(name)]
        self.assertEqual(left, [], "shared memory left behind")
        self.assertEqual(childPIDs(), [], "child processes left behind")

    def workerOf(self, q, index=0):
        return q.workers()[index]

    @defer.inlineCallbacks
    def replaced(self, worker, oldProcess):
        """Fire once ``worker`` has a live child other than
        ``oldProcess``, and ``oldProcess`` has ended."""
        yield waitUntil(
            lambda: not oldProcess.is_alive() and
            worker.process is not oldProcess and worker.process.is_alive(),
            "a replacement of {!r}".format(oldProcess))
