"""SQLAlchemy 2 on psycopg 3 through lakebase-proxy (run by tests/compat.rs).

What SQLAlchemy adds over the driver is its pool (reset-on-return, pre-ping), the ORM's unit
of work and server-side cursors for streaming; COPY, LISTEN and cancel have no SQLAlchemy
API (the driver's are checked in the psycopg3 column). COMPAT_MODE: see compat.py."""

import os
import threading

import compat
from compat import BYTES, LARGE_ROWS, LARGE_VALUE, UNICODE, UNICODE_CHARS, equal, ensure

sqlalchemy = compat.require("sqlalchemy")
psycopg = compat.require("psycopg")
compat.version(f"SQLAlchemy {sqlalchemy.__version__} on psycopg {psycopg.__version__}")
from sqlalchemy import LargeBinary, String, create_engine, func, select, text  # noqa: E402
from sqlalchemy.exc import DBAPIError  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column  # noqa: E402

# No password in the URL: the proxy trusts loopback clients.
URL = sqlalchemy.URL.create(
    "postgresql+psycopg",
    host=os.environ["PGHOST"],
    port=int(os.environ["PGPORT"]),
    username=os.environ["PGUSER"],
    database=os.environ["PGDATABASE"],
)
engine = create_engine(URL, pool_size=4, max_overflow=0, pool_pre_ping=True, pool_timeout=10)


class Base(DeclarativeBase):
    pass


class Item(Base):
    # A real table (not TEMP): the ORM checks read it back on other pooled sessions. One per
    # program, as copies of it may run at the same time.
    __tablename__ = f"compat_sqlalchemy_items_{os.getpid()}"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String)
    data: Mapped[bytes] = mapped_column(LargeBinary, default=b"")


def count_items():
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(Item))


def simple():
    with engine.connect() as conn:
        # exec_driver_sql without parameters: psycopg sends a simple Query. The connection
        # goes back to the pool, so the table lives only as long as the transaction
        # SQLAlchemy began (a plain TEMP table would pin the pooled session to its server
        # connection for good in transaction mode).
        conn.exec_driver_sql("CREATE TEMP TABLE t (v int) ON COMMIT DROP; INSERT INTO t VALUES (1), (2)")
        equal(conn.exec_driver_sql("SELECT sum(v) FROM t").scalar(), 3)


def params():
    with engine.connect() as conn:
        row = conn.execute(text("SELECT CAST(:a AS int) + :b, CAST(:s AS text) || '!'"), {"a": 40, "b": 2, "s": "hi"})
        equal(tuple(row.one()), (42, "hi!"))


def prepared():
    tag = compat.tag("sqlalchemy")
    query = text(f"SELECT CAST(:i AS int) * 2 /* {tag} */")
    with engine.connect() as conn:
        # psycopg prepares a statement server-side at its 6th execution (prepare_threshold=5
        # runs before). Each run in a transaction of its own: in transaction mode each may
        # take another server connection.
        for i in range(6):
            equal(conn.execute(query, {"i": i}).scalar(), i * 2)
            conn.commit()
        # The last runs and the lookup in one transaction: one server connection.
        for i in range(2):
            equal(conn.execute(query, {"i": i}).scalar(), i * 2)
        rows = conn.execute(text(compat.PREPARED_LOOKUP.format(":tag")), {"tag": tag}).all()
        conn.commit()
    return f"psycopg's automatic prepare at the 6th run: {compat.check_prepared([tuple(r) for r in rows], 2)}"


def commit():
    with Session(engine) as session:
        session.add_all([Item(id=1, name="one"), Item(id=2, name="two")])
        session.commit()
    # Read back on whatever pooled session comes next.
    equal(count_items(), 2)


def rollback():
    with Session(engine) as session:
        session.add(Item(id=3, name="three"))
        session.flush()  # the INSERT reaches the server inside the transaction...
        session.rollback()  # ...and is undone
    equal(count_items(), 2)


def error_recovery():
    with engine.connect() as conn:
        try:
            conn.execute(text("SELECT 1 / 0"))
            raise AssertionError("1/0 did not fail")
        except DBAPIError as e:
            equal(e.orig.sqlstate, "22012", "sqlstate")
        try:
            conn.execute(text("SELECT 1"))
            raise AssertionError("a statement in the failed transaction succeeded")
        except DBAPIError as e:
            equal(e.orig.sqlstate, "25P02", "sqlstate")
        conn.rollback()
        equal(conn.execute(text("SELECT 'recovered'")).scalar(), "recovered")


def not_in_sqlalchemy(what):
    def check():
        raise compat.NotApplicable(f"SQLAlchemy has no {what} API; psycopg's is checked in its column")

    return check


def bytea():
    with Session(engine) as session:
        session.add(Item(id=10, name="bytes", data=BYTES))
        session.commit()
    with Session(engine) as session:
        equal(session.get(Item, 10).data, BYTES)


def unicode():
    with Session(engine) as session:
        session.add(Item(id=11, name=UNICODE))
        session.commit()
    with Session(engine) as session:
        item = session.get(Item, 11)
        equal(item.name, UNICODE)
        equal(session.scalar(select(func.char_length(Item.name)).where(Item.id == 11)), UNICODE_CHARS)


def large_result():
    with engine.connect() as conn:
        # stream_results: psycopg uses a server-side cursor (DECLARE, then FETCH in batches).
        result = conn.execution_options(stream_results=True, yield_per=10_000).execute(
            text("SELECT g, repeat('x', 100) FROM generate_series(1, :n) g"), {"n": LARGE_ROWS}
        )
        count, last = 0, None
        for row in result:
            count, last = count + 1, row[0]
        equal((count, last), (LARGE_ROWS, LARGE_ROWS), "rows")
        value = conn.execute(text("SELECT repeat('x', :n)"), {"n": LARGE_VALUE}).scalar()
        equal(len(value), LARGE_VALUE, "value out")
    return "streamed through a server-side cursor"


def concurrent():
    pids, failures = [], []

    def work():
        try:
            with engine.connect() as conn:
                server = conn.execute(text("SELECT pg_backend_pid() FROM pg_sleep(0.2)")).scalar()
                pids.append((conn.connection.dbapi_connection.info.backend_pid, server))
        except Exception as e:
            failures.append(e)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ensure(not failures, f"pool queries failed: {failures}")
    return f"QueuePool with pre-ping, {compat.check_sessions(pids, 8)}"


# If this fails the program stops and tests/compat.rs fails every cell with its stderr.
Base.metadata.drop_all(engine)
Base.metadata.create_all(engine)

compat.run(
    [
        ("simple", simple),
        ("params", params),
        ("prepared", prepared),
        ("commit", commit),
        ("rollback", rollback),
        ("error_recovery", error_recovery),
        ("copy_in", not_in_sqlalchemy("COPY")),
        ("copy_out", not_in_sqlalchemy("COPY")),
        ("listen_notify", not_in_sqlalchemy("LISTEN/NOTIFY")),
        ("cancel", not_in_sqlalchemy("cancel")),
        ("bytea", bytea),
        ("unicode", unicode),
        ("large_result", large_result),
        ("concurrent", concurrent),
    ]
)
Base.metadata.drop_all(engine)
