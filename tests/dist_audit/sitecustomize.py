"""Loaded by every Python process of a launched test run (tests/test_distributed.py puts this folder on PYTHONPATH).

On a rank other than 0 it reports, on stderr, every file-system write under $AUDIT_ROOT (the test's project folder):
opening a file for writing, creating, renaming or removing a file or folder. The test asserts there are none.
"""
import os
import sys

_ROOT = os.environ.get("AUDIT_ROOT")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_EVENTS = {"os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "os.symlink", "os.link", "os.truncate",
           "shutil.rmtree", "shutil.copyfile", "shutil.move"}


def _under_root(path) -> str | None:
    if isinstance(path, int) or path is None:
        return None
    try:
        p = os.path.abspath(os.fsdecode(path))
    except TypeError:
        return None
    return p if p == _ROOT or p.startswith(_ROOT + os.sep) else None


def _hook(event, args):
    if event == "open":
        path, mode, flags = (tuple(args) + (None, None, None))[:3]
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS)
        paths = [path] if writing else []
    elif event in _EVENTS:
        paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
    else:
        return
    for path in paths:
        p = _under_root(path)
        if p is not None:
            sys.stderr.write(f"AUDIT rank {os.environ.get('RANK')} {event} {p}\n")


if _ROOT and os.environ.get("RANK", "0") != "0":
    _ROOT = os.path.abspath(_ROOT)
    sys.addaudithook(_hook)
