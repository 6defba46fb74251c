"""Shared by the Python client checks: the report format, the test data and small asserts.

tests/compat.rs runs each check_*.py with PGHOST/PGPORT/PGUSER/PGDATABASE pointing at the
proxy and reads one line per check from stdout:

    CHECK <name> ok [note]
    CHECK <name> FAIL <reason>
    CHECK <name> n/a <why the client cannot do it>
    MISSING <what>            (a package is not installed: every cell fails with this)
"""

import importlib
import sys
import time

# The same values every client sends and expects back (see tests/compat.rs).
UNICODE = "ünïcødé ✓ 漢字"
UNICODE_CHARS = 12
BYTES = bytes(range(256))
LARGE_ROWS = 100_000
LARGE_VALUE = 10 * 1024 * 1024  # 10 MiB
CANCEL_AFTER = 0.5  # seconds into pg_sleep(30) before cancelling
CANCEL_LIMIT = 5.0  # a cancel that takes longer than this counts as broken


class NotApplicable(Exception):
    """Raised by a check the client has no API for; the message says why."""


def require(module):
    """Imports `module`, or reports it missing and exits: a missing driver must not look like a pass."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        print(f"MISSING {module} ({e}; pip install -r tests/compat/python/requirements.txt)", flush=True)
        sys.exit(2)


def equal(got, want, what="value"):
    if got != want:
        raise AssertionError(f"{what}: got {shorten(got)!r}, want {shorten(want)!r}")


def ensure(condition, message):
    if not condition:
        raise AssertionError(message)


def shorten(value):
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def channel(client):
    """A LISTEN channel of this client's own, as the clients run at the same time."""
    return f"compat_{client}"


def run(checks):
    """Runs (name, function) pairs in order, each on its own connections, so one failure
    cannot hide the others. A function returns None or a note, raises NotApplicable, or
    raises anything else to fail."""
    for name, check in checks:
        started = time.monotonic()
        try:
            note = check()
            report(name, "ok", note or "")
        except NotApplicable as e:
            report(name, "n/a", str(e))
        except Exception as e:
            report(name, "FAIL", f"{type(e).__name__}: {e} (after {time.monotonic() - started:.1f}s)")


def report(name, status, detail=""):
    detail = " ".join(str(detail).split())  # one line, whatever the driver's message looks like
    print(f"CHECK {name} {status} {detail}".rstrip(), flush=True)


def version(text):
    """The client's version, for the matrix's header."""
    print(f"VERSION {text}", flush=True)
