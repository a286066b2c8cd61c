"""
What the shared memory tests share: our /dev/shm entries, a fixture that
fails a test leaving any behind, and fresh interpreters to attach from.
"""
import gc
import os
import subprocess
import sys
import textwrap

import pytest

SHM_DIRECTORY = "/dev/shm"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ourEntries():
    """Our entries in /dev/shm (empty where there is no such directory)."""
    if not os.path.isdir(SHM_DIRECTORY):
        return set()
    return {name for name in os.listdir(SHM_DIRECTORY)
            if name.startswith("aq-")}


@pytest.fixture(autouse=True)
def noLeftovers():
    """Each test must unlink every segment it creates."""
    before = ourEntries()
    yield
    gc.collect()
    assert ourEntries() - before == set()


def runChild(code, stdin=b""):
    """Run ``code`` in a fresh interpreter with every warning an error;
    returns its stdout after checking it succeeded silently on stderr."""
    prologue = ("import sys, pickle\n"
                "from multiprocessing import resource_tracker\n")
    epilogue = ("\nassert resource_tracker._resource_tracker._fd is None, "
                "'the resource tracker was started'\n")
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c",
         prologue + textwrap.dedent(code) + epilogue],
        input=stdin, capture_output=True, cwd=ROOT, timeout=60,
        env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.stderr == b"" and result.returncode == 0, \
        result.stderr.decode()
    return result.stdout
