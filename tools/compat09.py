"""
Runs AsynQueue 0.9.9's own test modules against this asynqueue: downloads
the 0.9.9 sdist from PyPI, adds its ``test`` package under ``asynqueue``,
and runs it with trial. Usage: ``python tools/compat09.py [module ...]``.

Only the shims that 0.9.9's Python-2 leftovers need are applied (its
``zope.interface.implements`` import and its ``sys.path`` imports of
``threads`` and ``util``). Two tests are known to fail for reasons of the
old suite itself: ``test_info.Test_Info.test_nn`` expects the FQN
``util.testFunction`` that its ``sys.path`` hack produced, and
``test_util.TestDeferredTracker.test_deferToAll_quitWaiting`` asserts a
wait of 0.22 s, calibrated to 0.9's polling overhead (ours is 0.20 s).
"""
import glob
import os
import subprocess
import sys
import tarfile
import tempfile

#: The 0.9.9 test modules that exercise what exists here.
MODULES = [
    "test_base", "test_tasks", "test_util", "test_iteration", "test_info",
    "test_interfaces", "test_workers", "test_threads",
]


def fetchTests(workDir):
    """Download the 0.9.9 sdist and return the folder holding its tests."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps",
         "--no-binary", ":all:", "--dest", workDir, "AsynQueue==0.9.9"],
        check=True, stdout=subprocess.DEVNULL)
    archive = glob.glob(os.path.join(workDir, "*.tar.gz"))[0]
    with tarfile.open(archive) as tar:
        tar.extractall(workDir, filter="data")
    overlay = os.path.join(workDir, "overlay")
    os.makedirs(overlay)
    tests = glob.glob(os.path.join(workDir, "*", "asynqueue", "test"))[0]
    os.rename(tests, os.path.join(overlay, "test"))
    open(os.path.join(overlay, "test", "__init__.py"), "w").close()
    return overlay


def runTests(overlay, modules):
    """Run trial on the 0.9.9 modules, with asynqueue.test from overlay."""
    import zope.interface
    zope.interface.implements = lambda *args: None
    import asynqueue
    import asynqueue.threads
    import asynqueue.util
    asynqueue.__path__.append(overlay)
    sys.modules["threads"] = asynqueue.threads
    sys.modules["util"] = asynqueue.util
    from twisted.scripts.trial import run
    sys.argv = ["trial"] + ["asynqueue.test." + name for name in modules]
    run()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as workDir:
        runTests(fetchTests(workDir), sys.argv[1:] or MODULES)
