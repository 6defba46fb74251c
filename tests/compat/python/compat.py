"""Shared by the Python client checks: the report format, the test data and small asserts.

tests/compat.rs runs each check_*.py with PGHOST/PGPORT/PGUSER/PGDATABASE pointing at the
proxy and reads one line per check from stdout:

    CHECK <name> ok [note]
    CHECK <name> FAIL <reason>
    CHECK <name> n/a <why the client cannot do it>
    MISSING <what>            (a package is not installed: every cell fails with this)

Environment besides PG*, set by tests/compat.rs for its transaction-mode pass:

    COMPAT_MODE=transaction   the proxy pools by transaction: a session's statements may run
                              on different server connections, and the pid in BackendKeyData
                              is the proxy's, not a server's (checks that compare pids say
                              which pid they mean in each mode)
    COMPAT_LOCK=<path>        a directory that checks holding a server connection while they
                              wait for another session (LISTEN/NOTIFY, a cancel) create before
                              they start and remove after: with two server connections shared
                              by every client, two such checks at once could take both and
                              wait for each other forever
"""

import contextlib
import importlib
import os
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


MODE = os.environ.get("COMPAT_MODE", "session")
TRANSACTION = MODE == "transaction"
LOCK_WAIT = 60.0  # seconds; the lock is held for a few seconds at most by each check


def channel(client):
    """A LISTEN channel of this program's own: several clients, and several copies of one
    client, run at the same time."""
    return f"compat_{client}_{os.getpid()}"


def tag(client):
    """Text that marks this program's statements, to find them in pg_prepared_statements or
    pg_stat_activity among those of the copies running at the same time."""
    return f"compat_{client}_{os.getpid()}"


PREPARED_LOOKUP = (
    "SELECT name, generic_plans + custom_plans, from_sql FROM pg_prepared_statements WHERE strpos(statement, {}) > 0"
)


def check_prepared(rows, runs):
    """The rows PREPARED_LOOKUP found, run in the same transaction as the statement's last
    `runs` executions: exactly one protocol-level (not SQL PREPARE) statement with this text
    on the server connection, executed at least `runs` times there. In transaction mode its
    name is the proxy's (_lbpN), so it is found by its text; the execution count is what
    shows the client's statement was reused, not parsed again under another name."""
    equal(len(rows), 1, "server-side statements with this text")
    name, executions, from_sql = rows[0]
    ensure(not from_sql, f"{name} was prepared by SQL PREPARE, not by the protocol")
    ensure(executions >= runs, f"{name} executed {executions} time(s) on this server, want >= {runs}")
    return f"{name}, executed {executions} times on the server"


def check_sessions(pairs, queries):
    """`pairs` holds (the pid from the session's BackendKeyData, pg_backend_pid()) per query
    run through a client's pool. Session mode: each session is its own server process, so the
    server pids count the sessions. Transaction mode: the server pids are those of the pool's
    few shared connections, so the sessions are counted by the pids the proxy issued in
    BackendKeyData (distinct per client session) instead."""
    equal(len(pairs), queries, "queries answered")
    sessions = len({key for key, _ in pairs}) if TRANSACTION else len({server for _, server in pairs})
    ensure(sessions >= 2, f"only {sessions} session(s) used")
    servers = len({server for _, server in pairs})
    return f"{sessions} sessions" + (f" on {servers} server connection(s)" if TRANSACTION else "")


@contextlib.contextmanager
def exclusive():
    """Holds COMPAT_LOCK (see above) for the block, when it is set."""
    path = os.environ.get("COMPAT_LOCK")
    if not path:
        yield
        return
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            os.mkdir(path)
            break
        except FileExistsError:
            if time.monotonic() > deadline:
                raise AssertionError(f"COMPAT_LOCK still held by another check after {LOCK_WAIT:.0f}s")
            time.sleep(0.02)
    try:
        yield
    finally:
        os.rmdir(path)


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
