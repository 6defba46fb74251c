//! The scenarios, one or more per item of the transaction-pooling checklist
//! (`shared/TXN-POOLING.md`), the item ids first in each name.
//!
//! Every scenario must give the same replies straight from PostgreSQL (each client on its own
//! backend) and through a pool of one server connection, so:
//! - a client that holds the server (inside a transaction, in the middle of a pipeline without
//!   Sync, or pinned by session state) finishes or leaves before any other client waits for a
//!   reply; the others may send meanwhile, their messages queue;
//! - what a client sees never depends on when another client's queued statement runs (a count
//!   is taken only where the other client's writes are settled, or rolled back);
//! - any session state (SET, LISTEN, PREPARE, advisory locks, temp tables, WITH HOLD cursors,
//!   SET ROLE) counts as pinning: no other client waits for a reply until its client has left.
//!
//! Tables live in the run's own schema ([`Ctx::t`]), so the three test functions can run at
//! the same time against the shared database.

use test_support::wire::{self, bind, close, copy_data, copy_done, copy_fail, describe, execute, flush, parse, sync};

use crate::harness::{CLOSED_BY_PEER, Scenario};

/// What the scenarios of one test function name their objects after.
pub struct Ctx {
    /// Schema holding the run's tables; also the prefix of its other names (channels, the
    /// schemas of P2, markers in query texts).
    pub schema: String,
    /// First advisory lock key of the run (the run uses a few keys from here).
    pub lock_base: i64,
    /// A role the clients' role may SET ROLE to.
    pub role: String,
}

impl Ctx {
    /// A table (or sequence) name in the run's schema.
    fn t(&self, name: &str) -> String {
        format!("{}.{name}", self.schema)
    }

    /// SQL that drops and creates table `name` with `columns`.
    fn table(&self, name: &str, columns: &str) -> String {
        let t = self.t(name);
        format!("DROP TABLE IF EXISTS {t}; CREATE TABLE {t} ({columns})")
    }
}

/// OID of `int4pl(int4, int4)`, for a FunctionCall.
const INT4PL: u32 = 177;
/// OID of `int4`.
const INT4: u32 = 23;
/// OID of `text`.
const TEXT: u32 = 25;

/// Parse with no parameter types.
fn p(name: &str, sql: &str) -> Vec<u8> {
    parse(name, sql, &[])
}

/// Bind of `statement` into the unnamed portal, no parameters.
fn b(statement: &str) -> Vec<u8> {
    bind("", statement, &[])
}

/// Bind of `statement` into the unnamed portal with text parameters.
fn bp(statement: &str, params: &[&str]) -> Vec<u8> {
    let params: Vec<Option<&[u8]>> = params.iter().map(|v| Some(v.as_bytes())).collect();
    bind("", statement, &params)
}

/// Execute of the unnamed portal, all rows.
fn e() -> Vec<u8> {
    execute("", 0)
}

/// Describe of a statement.
fn ds(name: &str) -> Vec<u8> {
    describe(b'S', name)
}

/// Close of a statement.
fn cs(name: &str) -> Vec<u8> {
    close(b'S', name)
}

/// Bind, Execute and Sync of a named statement: the usual "run it" batch.
fn run(statement: &str) -> [Vec<u8>; 3] {
    [b(statement), e(), sync()]
}

/// Every scenario, in the order they run.
pub fn all(x: &Ctx) -> Vec<Scenario> {
    vec![
        baseline(),
        t1(),
        t2(x),
        t3(),
        t3_sync_and_query(),
        t3_function_call(),
        t3_query_ends_series(),
        t4(),
        t5(),
        t6(x),
        t7_in_flight(x),
        t7_half_message(),
        t8(x),
        t9_running(x),
        t9_idle(x),
        t10(x),
        p1(),
        p2_types(),
        p2_names(),
        p2_search_path(x),
        p3(),
        p4(x),
        p5(),
        p6(),
        p7(),
        p8(),
        p9(),
        p10(),
        p11(),
        p12(),
        p13(),
        p14(x),
        p15(),
        p16(),
        p16_long_names(),
        u1(),
        u2(),
        u2_across_settings(),
        u3(),
        u4(),
        e1(),
        e2(),
        e3(),
        e4(x),
        e5(x),
        e6(),
        s1(),
        s2(),
        s3(),
        s4(),
        s5(),
        st1(),
        st2(),
        st3(),
        st4(),
        st5(),
        st6_listen(x),
        st6_advisory(x),
        st6_temp(),
        st6_hold_cursor(),
        st6_load(),
        st6_role(x),
        st7(x),
        st8(x),
    ]
}

/// Baseline: three clients, simple and extended queries.
fn baseline() -> Scenario {
    Scenario::new("baseline: three clients, simple and extended queries", 3)
        .q(0, "SELECT 1 AS a")
        .q(1, "SELECT 'two' AS b, NULL AS c")
        .send(2, [p("", "SELECT $1::int + 1 AS d"), bp("", &["2"]), describe(b'P', ""), e(), sync()])
        .wait(2)
        .sq(0, "SELECT 2; SELECT 3")
        .sq(1, "VALUES (1), (2)")
        .sq(2, "SELECT generate_series(1, 3)")
        .build()
}

/// T1 pipelined P,B,E,S then P,H keep the server until the last reply.
fn t1() -> Scenario {
    Scenario::new("T1 pipelined P,B,E,S then P,H keep the server until the last reply", 2)
        .send(0, [p("", "SELECT 1 AS one"), b(""), e(), sync(), p("t1", "SELECT $1::int + 1 AS next"), flush()])
        .wait(0)
        .tag(0, b'1', 2)
        // The other client takes the second server (or queues for the only one).
        .sq(1, "BEGIN")
        .send(0, [bp("t1", &["41"]), e(), sync()])
        .wait(0)
        .wait(1)
        .q(1, "SELECT 2")
        .q(1, "COMMIT")
        .build()
}

/// T2 Z(T) and Z(E) keep the server until ROLLBACK; others queue.
fn t2(x: &Ctx) -> Scenario {
    let t = x.t("t2");
    Scenario::new("T2 Z(T) and Z(E) keep the server until ROLLBACK; others queue", 2)
        .setup(&x.table("t2", "a int"))
        .q(0, "BEGIN")
        .q(0, &format!("INSERT INTO {t} VALUES (1)"))
        .sq(1, &format!("SELECT count(*) FROM {t}"))
        .q(0, "SELECT 1/0")
        .q(0, "SELECT 1")
        .send(0, [p("", "SELECT 2"), b(""), e(), sync()])
        .wait(0)
        .q(0, "ROLLBACK")
        .wait(1)
        .q(1, &format!("SELECT count(*) FROM {t}"))
        .build()
}

/// T3 all in one batch: Syncs, a Query, a FunctionCall, and a Query ending a Sync-less series.
fn t3() -> Scenario {
    Scenario::new("T3 all in one batch: Syncs, a Query, a FunctionCall, and a Query ending a Sync-less series", 2)
        .send(
            0,
            [
                sync(),
                sync(),
                wire::query("SELECT 1; SELECT 2"),
                wire::function_call(INT4PL, &[Some(b"2"), Some(b"3")]),
                p("", "SELECT 'x' AS x"),
                b(""),
                e(),
                wire::query("SELECT 3"),
            ],
        )
        .sq(1, "SELECT 4")
        .wait(0)
        .wait(1)
        .build()
}

/// T3 one ReadyForQuery per Sync and per Query, multi-statement included.
fn t3_sync_and_query() -> Scenario {
    Scenario::new("T3 one ReadyForQuery per Sync and per Query, multi-statement included", 2)
        .send(0, [sync(), sync(), wire::query("SELECT 1; SELECT 2")])
        .sq(1, "SELECT 4")
        .wait(0)
        .wait(1)
        .build()
}

/// T3 one ReadyForQuery per FunctionCall, failing or not.
fn t3_function_call() -> Scenario {
    Scenario::new("T3 one ReadyForQuery per FunctionCall, failing or not", 2)
        .send(0, [wire::function_call(INT4PL, &[Some(b"2"), Some(b"3")])])
        .sq(1, "SELECT 4")
        .wait(0)
        .wait(1)
        .send(0, [wire::function_call(INT4PL, &[Some(b"2147483647"), Some(b"1")]), sync()])
        .sq(1, "SELECT 5")
        .wait(0)
        .wait(1)
        .build()
}

/// T3 a Query ends a Sync-less series of extended messages.
fn t3_query_ends_series() -> Scenario {
    Scenario::new("T3 a Query ends a Sync-less series of extended messages", 2)
        .send(0, [p("", "SELECT 'x' AS x"), b(""), e(), wire::query("SELECT 3")])
        .sq(1, "SELECT 4")
        .wait(0)
        .wait(1)
        .build()
}

/// T4 a Flush ends nothing: P,D,H ... B,E,S on one server while the pool is full.
fn t4() -> Scenario {
    Scenario::new("T4 a Flush ends nothing: P,D,H ... B,E,S on one server while the pool is full", 3)
        .send(0, [p("t4", "SELECT $1::int * 2 AS twice"), ds("t4"), flush()])
        .tag(0, b'T', 1)
        .sq(2, "BEGIN")
        .sq(1, "SELECT 10")
        .send(0, [bp("t4", &["21"]), e(), sync()])
        .wait(0)
        .wait(2)
        .q(2, "COMMIT")
        .wait(1)
        .build()
}

/// T5 a suspended portal stays on its server; the next Execute continues.
fn t5() -> Scenario {
    Scenario::new("T5 a suspended portal stays on its server; the next Execute continues", 2)
        .send(0, [p("", "SELECT g FROM generate_series(1, 5) g"), bind("t5", "", &[]), execute("t5", 2), flush()])
        .tag(0, b's', 1)
        .sq(1, "SELECT 42")
        .send(0, [execute("t5", 2), flush()])
        .tag(0, b's', 2)
        .send(0, [execute("t5", 0), sync()])
        .wait(0)
        .wait(1)
        .build()
}

/// T6 COPY keeps the server; CopyData after an error is dropped.
fn t6(x: &Ctx) -> Scenario {
    let t = x.t("t6");
    Scenario::new("T6 COPY keeps the server; CopyData after an error is dropped", 2)
        .setup(&x.table("t6", "a int"))
        .sq(0, &format!("COPY {t} FROM STDIN"))
        .tag(0, b'G', 1)
        .sq(1, &format!("SELECT count(*) FROM {t}"))
        // The bad line fails the COPY; what follows it is dropped by the server.
        .send(0, [copy_data(b"1\n"), copy_data(b"x\n"), copy_data(b"3\n"), copy_done()])
        .wait(0)
        .wait(1)
        .sq(0, &format!("COPY {t} FROM STDIN"))
        .tag(0, b'G', 2)
        .send(0, [copy_data(b"1\n2\n"), copy_data(b"3\n"), copy_done()])
        .wait(0)
        .q(1, &format!("SELECT count(*) FROM {t}"))
        .sq(0, &format!("COPY {t} FROM STDIN"))
        .tag(0, b'G', 3)
        .send(0, [copy_data(b"4\n"), copy_fail("changed my mind")])
        .wait(0)
        .q(0, &format!("COPY (SELECT a FROM {t} ORDER BY a) TO STDOUT"))
        .send(0, [p("", &format!("COPY {t} FROM STDIN")), b(""), e(), flush()])
        .tag(0, b'G', 4)
        .send(0, [copy_data(b"9\n"), copy_done(), sync()])
        .wait(0)
        .q(1, &format!("SELECT count(*) FROM {t}"))
        .build()
}

/// T7 a client that vanishes with a request in flight: its server is not reused as is.
fn t7_in_flight(x: &Ctx) -> Scenario {
    let t = x.t("t7");
    Scenario::new("T7 a client that vanishes with a request in flight: its server is not reused as is", 2)
        .setup(&x.table("t7", "a int"))
        .q(0, "BEGIN")
        .sq(0, &format!("INSERT INTO {t} VALUES (1); SELECT pg_sleep(0.3)"))
        .disconnect(0)
        .q(1, &format!("SELECT count(*) FROM {t}"))
        .q(1, "SELECT 1")
        .build()
}

/// T7 clients that vanish mid-message or mid-pipeline leave a clean server.
fn t7_half_message() -> Scenario {
    let half = wire::query("SELECT 123");
    Scenario::new("T7 clients that vanish mid-message or mid-pipeline leave a clean server", 3)
        .send_raw(0, &half[..7])
        .disconnect(0)
        .send(2, [p("t7", "SELECT 7"), flush()])
        .tag(2, b'1', 1)
        .disconnect(2)
        .q(1, "SELECT 5")
        .send(1, [p("t7", "SELECT 'mine' AS t7"), b("t7"), e(), sync()])
        .wait(1)
        .build()
}

/// T8 a client that vanishes inside a transaction: rolled back before the next client.
fn t8(x: &Ctx) -> Scenario {
    let t = x.t("t8");
    Scenario::new("T8 a client that vanishes inside a transaction: rolled back before the next client", 3)
        .setup(&x.table("t8", "a int"))
        .q(0, "BEGIN")
        .q(0, &format!("INSERT INTO {t} VALUES (1)"))
        .disconnect(0)
        .q(1, "BEGIN")
        .q(1, "SELECT 1/0")
        .disconnect(1)
        .q(2, &format!("SELECT count(*) FROM {t}"))
        .q(2, "BEGIN")
        .q(2, &format!("INSERT INTO {t} VALUES (2)"))
        .q(2, "COMMIT")
        .q(2, &format!("SELECT count(*) FROM {t}"))
        .build()
}

/// T9 a cancel reaches the running query (57014).
fn t9_running(x: &Ctx) -> Scenario {
    let marker = format!("{} t9 running", x.schema);
    Scenario::new("T9 a cancel reaches the running query (57014)", 1)
        .sq(0, &format!("SELECT pg_sleep(5) /* {marker} */"))
        .wait_active(&marker)
        .cancel(0)
        .wait(0)
        .q(0, "SELECT 1")
        .build()
}

/// T9 a cancel from an idle client cancels nothing, not another client's query.
fn t9_idle(x: &Ctx) -> Scenario {
    let marker = format!("{} t9 idle", x.schema);
    Scenario::new("T9 a cancel from an idle client cancels nothing, not another client's query", 2)
        .q(0, "SELECT 1")
        .sq(1, &format!("SELECT pg_sleep(1) /* {marker} */"))
        .wait_active(&marker)
        .cancel(0)
        .wait(1)
        .q(0, "SELECT 2")
        .build()
}

/// T10 BEGIN's replies are PostgreSQL's, Describe included.
fn t10(x: &Ctx) -> Scenario {
    Scenario::new("T10 BEGIN's replies are PostgreSQL's, Describe included", 2)
        .send(
            0,
            [
                p("", "BEGIN"),
                b(""),
                describe(b'P', ""),
                e(),
                p("", "SELECT 1 AS x"),
                b(""),
                describe(b'P', ""),
                e(),
                sync(),
            ],
        )
        .wait(0)
        .sq(1, "SELECT 'queued'")
        .send(0, [p("t10", "BEGIN"), ds("t10"), sync()])
        .wait(0)
        .send(0, [b("t10"), e(), sync()])
        .wait(0)
        .q(0, "COMMIT")
        .q(0, "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY")
        .q(0, "SHOW transaction_isolation")
        .q(0, "COMMIT")
        .q(0, "START TRANSACTION READ ONLY")
        .q(0, &format!("CREATE TABLE {} (a int)", x.t("t10")))
        .q(0, "COMMIT")
        .q(0, "COMMIT")
        .q(0, "BEGIN; SELECT 1; COMMIT")
        .wait(1)
        .build()
}

/// P1 three clients prepare s1 with different SQL.
fn p1() -> Scenario {
    Scenario::new("P1 three clients prepare s1 with different SQL", 3)
        .send(0, [p("s1", "SELECT 'zero' AS who"), sync()])
        .wait(0)
        .send(1, [p("s1", "SELECT 1 AS n, 'one' AS who"), sync()])
        .wait(1)
        .send(2, [p("s1", "SELECT $1::int * 3 AS three"), sync()])
        .wait(2)
        .send(2, [bp("s1", &["5"]), e(), sync()])
        .wait(2)
        .send(0, run("s1"))
        .wait(0)
        .send(1, [ds("s1"), b("s1"), e(), sync()])
        .wait(1)
        .send(0, [ds("s1"), b("s1"), e(), sync()])
        .send(1, run("s1"))
        .send(2, [ds("s1"), bp("s1", &["7"]), e(), sync()])
        .wait(0)
        .wait(1)
        .wait(2)
        .build()
}

/// P2 the same text with other parameter types is another statement.
fn p2_types() -> Scenario {
    Scenario::new("P2 the same text with other parameter types is another statement", 3)
        .send(0, [parse("p2", "SELECT $1 AS v", &[INT4]), ds("p2"), sync()])
        .wait(0)
        .send(1, [parse("p2", "SELECT $1 AS v", &[TEXT]), ds("p2"), sync()])
        .wait(1)
        .send(2, [p("p2", "SELECT $1 AS v"), ds("p2"), sync()])
        .wait(2)
        .send(0, [bp("p2", &["7"]), e(), sync()])
        .send(1, [bp("p2", &["007"]), e(), sync()])
        .send(2, [bp("p2", &["x"]), e(), sync()])
        .wait(0)
        .wait(1)
        .wait(2)
        .build()
}

/// P2 one text under two clients' names; a closed name prepared again for other SQL.
fn p2_names() -> Scenario {
    Scenario::new("P2 one text under two clients' names; a closed name prepared again for other SQL", 2)
        .send(0, [p("same", "SELECT 'same' AS s"), sync()])
        .wait(0)
        .send(1, [p("other", "SELECT 'same' AS s"), b("other"), e(), sync()])
        .wait(1)
        .send(0, [cs("same"), p("same", "SELECT 'different' AS s"), b("same"), e(), sync()])
        .wait(0)
        .send(1, run("other"))
        .wait(1)
        .send(0, run("same"))
        .wait(0)
        .build()
}

/// P2 the same text under another search_path (SET LOCAL) reads the other table.
fn p2_search_path(x: &Ctx) -> Scenario {
    let (a, b_) = (format!("{}_p2a", x.schema), format!("{}_p2b", x.schema));
    let schemas = |s: &str, v: &str| {
        format!(
            "DROP SCHEMA IF EXISTS {s} CASCADE; CREATE SCHEMA {s}; CREATE TABLE {s}.tt (v text); \
             INSERT INTO {s}.tt VALUES ('{v}')"
        )
    };
    Scenario::new("P2 the same text under another search_path (SET LOCAL) reads the other table", 2)
        .setup(&schemas(&a, "from a"))
        .setup(&schemas(&b_, "from b"))
        .q(0, "BEGIN")
        .q(0, &format!("SET LOCAL search_path = {a}"))
        .send(0, [p("sp", "SELECT v FROM tt"), b("sp"), e(), sync()])
        .wait(0)
        .q(0, "COMMIT")
        .q(1, "BEGIN")
        .q(1, &format!("SET LOCAL search_path = {b_}"))
        .send(1, [p("sp", "SELECT v FROM tt"), b("sp"), e(), sync()])
        .wait(1)
        .q(1, "COMMIT")
        .q(0, "BEGIN")
        .q(0, &format!("SET LOCAL search_path = {b_}"))
        .send(0, run("sp"))
        .wait(0)
        .q(0, "COMMIT")
        .send(0, run("sp"))
        .wait(0)
        .build()
}

/// P3 a duplicate name gets 42P05, the batch is skipped, the connection stays usable.
fn p3() -> Scenario {
    Scenario::new("P3 a duplicate name gets 42P05, the batch is skipped, the connection stays usable", 2)
        .send(0, [p("d", "SELECT 1 AS d"), sync()])
        .wait(0)
        .send(0, [p("d", "SELECT 2 AS d"), b("d"), e(), sync()])
        .wait(0)
        .send(0, run("d"))
        .wait(0)
        .send(0, [p("d2", "SELECT 3 AS d"), p("d2", "SELECT 4 AS d"), b("d2"), e(), sync()])
        .wait(0)
        .send(0, run("d2"))
        .wait(0)
        .send(1, [p("d", "SELECT 5 AS d"), b("d"), e(), sync()])
        .wait(1)
        .send(1, [p("d", "SELECT 5 AS d"), sync()])
        .wait(1)
        .q(0, "SELECT 'still usable'")
        .build()
}

/// P4 a Parse that fails creates no name; the name can be prepared again.
fn p4(x: &Ctx) -> Scenario {
    Scenario::new("P4 a Parse that fails creates no name; the name can be prepared again", 2)
        .send(0, [p("f", "SELEC 1"), sync()])
        .wait(0)
        .send(0, [p("f", "SELECT 1 AS fixed"), b("f"), e(), sync()])
        .wait(0)
        .send(0, [p("g", &format!("SELECT * FROM {}", x.t("missing"))), b("g"), e(), sync()])
        .wait(0)
        .send(0, run("g"))
        .wait(0)
        .send(1, [p("g", "SELECT 'g of one' AS g"), b("g"), e(), sync()])
        .wait(1)
        .send(0, [p("g", "SELECT 'g at last' AS g"), b("g"), e(), sync()])
        .wait(0)
        .send(0, [parse("h", "SELECT $1::int AS h", &[999_999]), sync()])
        .wait(0)
        .send(0, [parse("h", "SELECT $1::int AS h", &[INT4]), bp("h", &["8"]), e(), sync()])
        .wait(0)
        .build()
}

/// Names a proxy might give its own server-side statements: a client guessing them must get
/// 26000 like everywhere else.
const GUESSED_INTERNAL_NAMES: [&str; 10] =
    ["_lbp0", "_lbp1", "_lbp2", "_lbp3", "lbp1", "s0", "s1", "PGBOUNCER_1", "DOORMAN_1", "__asyncpg_stmt_1__"];

/// P5 Bind/Describe of an unknown name: 26000 naming the client's name; no internal names.
fn p5() -> Scenario {
    let mut s =
        Scenario::new("P5 Bind/Describe of an unknown name: 26000 naming the client's name; no internal names", 2);
    s.send(0, run("nope"))
        .wait(0)
        .send(0, [ds("nope"), sync()])
        .wait(0)
        .send(0, [describe(b'P', "nope"), sync(), execute("nope", 0), sync()])
        .wait(0)
        .send(1, [p("mine", "SELECT 'mine' AS m"), b("mine"), e(), sync()])
        .wait(1)
        .send(1, [p("", "SELECT 'unnamed' AS u"), sync()])
        .wait(1);
    for name in GUESSED_INTERNAL_NAMES {
        s.send(0, [ds(name), b(name), e(), sync()]);
    }
    s.wait(0).send(1, run("mine")).wait(1).build()
}

/// P6 Describe (or Bind) alone on a server that lacks the statement.
fn p6() -> Scenario {
    Scenario::new("P6 Describe (or Bind) alone on a server that lacks the statement", 3)
        .send(0, [p("s6", "SELECT $1::text AS v"), sync()])
        .wait(0)
        // A pinned client that leaves gets its server reset, so no server has s6 any more.
        .q(2, "SET work_mem = '5MB'")
        .q(2, "SELECT 1")
        .terminate(2)
        .send(0, [ds("s6"), sync()])
        .wait(0)
        .send(0, [ds("s6"), bp("s6", &["asyncpg style"]), e(), sync()])
        .wait(0)
        .send(1, [p("s6", "SELECT $1::text AS v"), ds("s6"), bp("s6", &["other"]), e(), sync()])
        .wait(1)
        .build()
}

/// P7 statements the server has: ParseComplete in PostgreSQL's place, mixed batches.
fn p7() -> Scenario {
    Scenario::new("P7 statements the server has: ParseComplete in PostgreSQL's place, mixed batches", 3)
        .send(0, [p("a7", "SELECT 7 AS seven"), sync()])
        .wait(0)
        .send(
            1,
            [
                p("x", "SELECT 7 AS seven"),
                p("y", "SELECT 77 AS new"),
                ds("x"),
                ds("y"),
                b("x"),
                e(),
                b("y"),
                e(),
                sync(),
            ],
        )
        .wait(1)
        .send(
            2,
            [
                p("x", "SELECT 7 AS seven"),
                ds("x"),
                p("z", "SELECT 7 AS seven"),
                b("z"),
                e(),
                cs("x"),
                b("x"),
                e(),
                sync(),
            ],
        )
        .wait(2)
        .send(0, [ds("a7"), p("b7", "SELECT 77 AS new"), b("b7"), e(), b("a7"), e(), sync()])
        .wait(0)
        .build()
}

/// P8 a Flush delivers the replies already owed, even with no server traffic.
fn p8() -> Scenario {
    Scenario::new("P8 a Flush delivers the replies already owed, even with no server traffic", 2)
        .send(0, [p("a8", "SELECT 8 AS eight"), sync()])
        .wait(0)
        .send(1, [p("b8", "SELECT 8 AS eight"), flush()])
        .tag(1, b'1', 1)
        .send(1, [ds("b8"), flush()])
        .tag(1, b'T', 1)
        .send(1, [b("b8"), flush()])
        .tag(1, b'2', 1)
        .send(1, [cs("b8"), flush()])
        .tag(1, b'3', 1)
        .send(1, [e(), sync()])
        .wait(1)
        .send(0, run("a8"))
        .wait(0)
        .build()
}

/// P9 Close of a statement removes the client's name only; unknown is fine; portals apart.
fn p9() -> Scenario {
    Scenario::new("P9 Close of a statement removes the client's name only; unknown is fine; portals apart", 2)
        .send(0, [p("x9", "SELECT 9 AS nine"), sync()])
        .wait(0)
        .send(1, [p("y9", "SELECT 9 AS nine"), sync()])
        .wait(1)
        .send(0, [cs("x9"), sync()])
        .wait(0)
        .send(0, run("x9"))
        .wait(0)
        .send(1, run("y9"))
        .wait(1)
        .send(0, [cs("never"), close(b'P', "never"), sync()])
        .wait(0)
        .send(
            0,
            [p("same", "SELECT 10 AS ten"), bind("same", "same", &[]), close(b'P', "same"), b("same"), e(), sync()],
        )
        .wait(0)
        .send(0, run("same"))
        .wait(0)
        .build()
}

/// P10 Close and re-Parse of one name in one batch; Parse and Close in one batch.
fn p10() -> Scenario {
    Scenario::new("P10 Close and re-Parse of one name in one batch; Parse and Close in one batch", 2)
        .send(0, [p("z", "SELECT 1 AS v"), sync()])
        .wait(0)
        .send(0, [cs("z"), p("z", "SELECT 2 AS v"), b("z"), e(), sync()])
        .wait(0)
        .send(0, [p("w", "SELECT 3 AS v"), cs("w"), sync()])
        .wait(0)
        .send(0, run("w"))
        .wait(0)
        .send(1, [p("z", "SELECT 2 AS v"), cs("z"), p("z", "SELECT 1 AS v"), b("z"), e(), cs("z"), sync()])
        .wait(1)
        .send(1, run("z"))
        .wait(1)
        .send(0, run("z"))
        .wait(0)
        .build()
}

/// `n` Parses of distinct texts named `{prefix}{i}`, then Sync.
fn many_parses(prefix: &str, texts: std::ops::Range<usize>) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = texts.map(|i| p(&format!("{prefix}{i}"), &format!("SELECT {i} AS n{i}"))).collect();
    out.push(sync());
    out
}

/// P11 evictions at the per-server cap never drop a statement a queued message needs.
fn p11() -> Scenario {
    let mut reverse: Vec<Vec<u8>> = (0..30).rev().flat_map(|i| [b(&format!("s{i}")), e()]).collect();
    reverse.push(sync());
    let mut mixed: Vec<Vec<u8>> =
        (0..30).flat_map(|i| [p(&format!("m{i}"), &format!("SELECT {i} AS n{i}")), b(&format!("m{i}")), e()]).collect();
    mixed.push(sync());
    let mut described: Vec<Vec<u8>> = (0..30).flat_map(|i| [ds(&format!("s{i}")), b(&format!("s{i}")), e()]).collect();
    described.push(sync());
    // Parses beyond any small cap, with the first statement still needed at the end.
    let mut needed_later = many_parses("late", 100..140);
    needed_later.pop();
    needed_later.extend([b("late100"), e(), b("s0"), e(), sync()]);
    Scenario::new("P11 evictions at the per-server cap never drop a statement a queued message needs", 2)
        .send(0, many_parses("s", 0..30))
        .wait(0)
        .send(0, reverse)
        .wait(0)
        .send(1, mixed)
        .wait(1)
        .send(0, described)
        .wait(0)
        .send(0, needed_later)
        .wait(0)
        .build()
}

/// P12 the cap holds with several clients preparing at once.
fn p12() -> Scenario {
    let batch = |c: usize, round: usize| -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for i in 0..20 {
            // Half the texts are shared by all clients, half are the client's own.
            let sql = if i % 2 == 0 { format!("SELECT {i} AS shared") } else { format!("SELECT {i}, {c} AS own") };
            let name = format!("r{round}_{i}");
            out.extend([p(&name, &sql), b(&name), e()]);
        }
        out.push(sync());
        out
    };
    let mut s = Scenario::new("P12 the cap holds with several clients preparing at once", 3);
    for round in 0..3 {
        for c in 0..3 {
            s.send(c, batch(c, round));
        }
        for c in 0..3 {
            s.wait(c);
        }
    }
    for c in 0..3 {
        s.send(c, run("r0_4"));
    }
    s.build()
}

/// P13 statements survive their server's replacement: prepared again when needed.
fn p13() -> Scenario {
    Scenario::new("P13 statements survive their server's replacement: prepared again when needed", 2)
        .send(0, [p("s13", "SELECT 13 AS n"), sync()])
        .wait(0)
        // A client vanishing with a query in flight costs its server.
        .q(1, "BEGIN")
        .sq(1, "SELECT pg_sleep(0.2)")
        .disconnect(1)
        .send(0, [ds("s13"), sync()])
        .wait(0)
        .send(0, run("s13"))
        .wait(0)
        .build()
}

/// P14 a Parse after DDL gets a fresh plan; 0A000 on a stale one.
fn p14(x: &Ctx) -> Scenario {
    let t = x.t("t14");
    let select = format!("SELECT * FROM {t}");
    // A statement prepared before the DDL fails with 0A000 until its client prepares it again,
    // as in PostgreSQL; any Parse after the DDL gets a fresh plan. (Once a server connection's
    // copy is prepared again, the proxy lets an older statement of the same text use it rather
    // than keep failing: README, transaction pooling. So no stale run follows a fresh Parse.)
    Scenario::new("P14 a Parse after DDL gets a fresh plan; 0A000 on a stale one", 3)
        .setup(&format!("{}; INSERT INTO {t} VALUES (1)", x.table("t14", "a int")))
        .send(0, [p("s", &select), ds("s"), sync()])
        .wait(0)
        .send(0, run("s"))
        .wait(0)
        .admin(&format!("ALTER TABLE {t} ADD COLUMN b text DEFAULT 'new'"))
        .send(0, run("s"))
        .wait(0)
        .send(1, [p("s", &select), ds("s"), b("s"), e(), sync()])
        .wait(1)
        .send(0, [cs("s"), p("s", &select), b("s"), e(), sync()])
        .wait(0)
        .send(2, [p("c", &select), b("c"), e(), sync()])
        .wait(2)
        .build()
}

/// P15 a new statement name for every query.
fn p15() -> Scenario {
    let mut s = Scenario::new("P15 a new statement name for every query", 2);
    for round in 0..4 {
        let mut batch: Vec<Vec<u8>> = (0..100)
            .flat_map(|i| {
                let name = format!("q{round}_{i}");
                [p(&name, &format!("SELECT {i} AS n /* round {round} */")), b(&name), e()]
            })
            .collect();
        batch.push(sync());
        s.send(round % 2, batch).wait(round % 2);
    }
    s.build()
}

/// P16 big messages: 60 KiB Parse, 70 KiB Bind, long names, messages split across reads.
fn p16() -> Scenario {
    let big_sql = format!("SELECT length($1) AS n /* {} */", "x".repeat(60 * 1024));
    let big_param = "y".repeat(70 * 1024);
    let long_name = "n".repeat(200);
    Scenario::new("P16 big messages: 60 KiB Parse, 70 KiB Bind, long names, messages split across reads", 2)
        .send(0, [p("big", &big_sql), bp("big", &[&big_param]), e(), sync()])
        .wait(0)
        .send(1, [p("also big", &big_sql), bp("also big", &["short"]), e(), sync()])
        .wait(1)
        .send(0, [p(&long_name, "SELECT 'long' AS l"), b(&long_name), e(), sync()])
        .wait(0)
        .send_split(0, [p("split", "SELECT 16 AS split"), b("split"), e(), sync()], 1)
        .wait(0)
        .send_split(1, [p("big", &big_sql), bp("big", &[&big_param]), e(), sync()], 1000)
        .wait(1)
        .send(0, [b(&long_name), e(), sync()])
        .wait(0)
        .build()
}

/// P16 statement names longer than 63 bytes compare on their first 63, as in PostgreSQL.
fn p16_long_names() -> Scenario {
    let stem = "n".repeat(63);
    let (first, second) = (format!("{stem}A"), format!("{stem}B"));
    Scenario::new("P16 statement names longer than 63 bytes compare on their first 63, as in PostgreSQL", 1)
        .send(0, [p(&first, "SELECT 'first' AS f"), sync()])
        .wait(0)
        .send(0, [b(&second), e(), sync()])
        .wait(0)
        .send(0, [p(&second, "SELECT 'second' AS s"), sync()])
        .wait(0)
        .build()
}

/// U1 unnamed statements go to the server unnamed.
fn u1() -> Scenario {
    Scenario::new("U1 unnamed statements go to the server unnamed", 2)
        .send(0, [p("", "SELECT 1 AS u"), b(""), e(), p("", "SELECT 2 AS u"), b(""), e(), sync()])
        .wait(0)
        .send(1, [p("", "SELECT 'b' AS u"), ds(""), b(""), e(), sync()])
        .wait(1)
        .send(0, [p("", "SELECT $1::int AS u"), p("", "SELECT 3 AS u"), b(""), describe(b'P', ""), e(), sync()])
        .wait(0)
        .build()
}

/// U2 a client's unnamed statement survives its Sync and is bound later.
fn u2() -> Scenario {
    Scenario::new("U2 a client's unnamed statement survives its Sync and is bound later", 3)
        .send(0, [p("", "SELECT $1::int * 2 AS twice"), ds(""), sync()])
        .wait(0)
        .q(1, "SELECT 'other' AS o")
        .send(2, [p("", "SELECT 'c' AS c"), sync()])
        .wait(2)
        .send(0, [bp("", &["21"]), e(), sync()])
        .wait(0)
        .send(2, run(""))
        .wait(2)
        .send(0, [bp("", &["5"]), e(), sync()])
        .wait(0)
        .send(0, [ds(""), sync()])
        .wait(0)
        .build()
}

/// U2 also when the proxy brings the connection to another client's settings in between (its
/// SETs are simple queries, which destroy whatever unnamed statement the server had).
fn u2_across_settings() -> Scenario {
    Scenario::new("U2 an unnamed statement survives another client's settings being applied", 2)
        .send(0, [p("", "SELECT $1::int * 3 AS thrice"), ds(""), sync()])
        .wait(0)
        // By a named statement, so that nothing of client 1's touches the unnamed one.
        .send(1, [p("wm", "SET work_mem = '8MB'"), b("wm"), e(), sync()])
        .wait(1)
        .send(0, [bp("", &["14"]), e(), sync()])
        .wait(0)
        .send(1, [p("show", "SHOW work_mem"), b("show"), e(), sync()])
        .wait(1)
        .send(0, [bp("", &["2"]), e(), sync()])
        .wait(0)
        .build()
}

/// U3 a simple Query destroys the client's unnamed statement; another's never replaces it.
fn u3() -> Scenario {
    Scenario::new("U3 a simple Query destroys the client's unnamed statement; another's never replaces it", 2)
        .send(0, [p("", "SELECT 1 AS one"), sync()])
        .wait(0)
        .q(0, "SELECT 2 AS two")
        .send(0, run(""))
        .wait(0)
        .send(1, [p("", "SELECT 'b' AS b"), sync()])
        .wait(1)
        .send(0, [ds(""), sync()])
        .wait(0)
        .send(0, [p("", "SELECT 3 AS three"), sync()])
        .wait(0)
        .q(1, "SELECT 'bq'")
        .send(0, run(""))
        .wait(0)
        .send(1, run(""))
        .wait(1)
        .build()
}

/// U4 portals live inside their transaction.
fn u4() -> Scenario {
    Scenario::new("U4 portals live inside their transaction", 2)
        .q(0, "BEGIN")
        .send(0, [p("", "SELECT g FROM generate_series(1, 4) g"), bind("cur", "", &[]), execute("cur", 1), sync()])
        .wait(0)
        .sq(1, "SELECT 'waits'")
        .send(0, [execute("cur", 2), sync()])
        .wait(0)
        .send(0, [describe(b'P', "cur"), execute("cur", 0), sync()])
        .wait(0)
        .q(0, "COMMIT")
        .send(0, [execute("cur", 1), sync()])
        .wait(0)
        .send(0, [p("", "SELECT 1"), bind("p4", "", &[]), sync(), execute("p4", 0), sync()])
        .wait(0)
        .wait(1)
        .build()
}

/// E1 after an error, everything up to Sync is skipped; no made-up reply follows.
fn e1() -> Scenario {
    Scenario::new("E1 after an error, everything up to Sync is skipped; no made-up reply follows", 2)
        .send(0, [p("a", "SELECT 1 AS a"), sync()])
        .wait(0)
        .send(
            0,
            [b("a"), e(), p("b", "SELECT 1/0"), b("b"), e(), ds("a"), p("c", "SELECT 3"), cs("a"), b("a"), e(), sync()],
        )
        .wait(0)
        .send(0, run("c"))
        .wait(0)
        .send(0, run("a"))
        .wait(0)
        .send(0, run("b"))
        .wait(0)
        .send(1, [p("a", "SELECT 1 AS a"), p("x", "SELECT 1/0"), b("x"), e(), p("y", "SELECT 1 AS a"), sync()])
        .wait(1)
        .send(1, [ds("y"), sync(), b("a"), e(), sync()])
        .wait(1)
        .build()
}

/// E2 delayed Sync: the error arrives first, skipping goes on until the Sync.
fn e2() -> Scenario {
    Scenario::new("E2 delayed Sync: the error arrives first, skipping goes on until the Sync", 2)
        .send(0, [p("", "SELECT 1/0"), b(""), e(), flush()])
        .tag(0, b'E', 1)
        .sq(1, "SELECT 'queued'")
        .send(0, [p("x2", "SELECT 1"), b("x2"), e(), flush()])
        .send(0, [sync()])
        .wait(0)
        .send(0, run("x2"))
        .wait(0)
        .wait(1)
        .build()
}

/// E3 the statement cache follows what the server did.
fn e3() -> Scenario {
    Scenario::new("E3 the statement cache follows what the server did", 2)
        .send(0, [p("bad", "SELEC"), sync()])
        .wait(0)
        .send(0, [p("bad", "SELECT 1 AS good"), sync()])
        .wait(0)
        .send(0, [p("e1", "SELECT 'kept' AS k"), sync()])
        .wait(0)
        .send(0, [b("nonexistent"), e(), cs("e1"), sync()])
        .wait(0)
        .send(0, run("e1"))
        .wait(0)
        .send(1, [p("n1", "SELECT 33 AS n"), sync()])
        .wait(1)
        .send(1, [p("err", "SELECT 1/0"), b("err"), e(), p("n2", "SELECT 33 AS n"), sync()])
        .wait(1)
        .send(1, run("n2"))
        .wait(1)
        .send(1, run("n1"))
        .wait(1)
        .send(0, run("bad"))
        .wait(0)
        .build()
}

/// E4 an error rolls back the implicit transaction (Z(I)); inside BEGIN Z(E).
fn e4(x: &Ctx) -> Scenario {
    let t = x.t("e4");
    let count = format!("SELECT count(*) FROM {t}");
    Scenario::new("E4 an error rolls back the implicit transaction (Z(I)); inside BEGIN Z(E)", 2)
        .setup(&x.table("e4", "a int"))
        .send(0, [p("", &format!("INSERT INTO {t} VALUES (1)")), b(""), e(), p("", "SELECT 1/0"), b(""), e(), sync()])
        .wait(0)
        .q(0, &count)
        .q(0, &format!("INSERT INTO {t} VALUES (2); SELECT 1/0"))
        .q(0, &count)
        .q(0, "BEGIN")
        .q(0, &format!("INSERT INTO {t} VALUES (3)"))
        .q(0, "SELECT 1/0")
        .q(0, "COMMIT")
        .q(0, &count)
        .q(0, &format!("INSERT INTO {t} VALUES (4); BEGIN; INSERT INTO {t} VALUES (5)"))
        .q(0, "ROLLBACK")
        .q(1, &count)
        .build()
}

/// E5 a server lost under a running query reaches the client as an ErrorResponse.
fn e5(x: &Ctx) -> Scenario {
    let marker = format!("{} e5 lost", x.schema);
    Scenario::new("E5 a server lost under a running query reaches the client as an ErrorResponse", 2)
        .sq(0, &format!("SELECT pg_sleep(5) /* {marker} */"))
        .wait_active(&marker)
        .admin(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE pid <> pg_backend_pid() AND position('{marker}' in query) > 0"
        ))
        // The error, then the end of the connection (as PostgreSQL ends it).
        .tag(0, CLOSED_BY_PEER, 1)
        .q(1, "SELECT 'unaffected'")
        .build()
}

/// E6 a bad SET in a batch does not desynchronise anything.
fn e6() -> Scenario {
    Scenario::new("E6 a bad SET in a batch does not desynchronise anything", 2)
        .q(0, "SET statement_timeout = 'banana'")
        .q(0, "SHOW statement_timeout")
        .send(0, [p("", "SET work_mem = '5MB'"), b(""), e(), p("", "SET work_mem = 'lots'"), b(""), e(), sync()])
        .wait(0)
        .q(0, "SHOW work_mem")
        .q(0, "SET work_mem = '6MB'; SET no_such_parameter = 1")
        .q(0, "SHOW work_mem")
        .sq(1, "SHOW work_mem")
        .terminate(0)
        .wait(1)
        .build()
}

/// S1 DEALLOCATE ALL and DISCARD ALL clear names at their place in the pipeline.
fn s1() -> Scenario {
    Scenario::new("S1 DEALLOCATE ALL and DISCARD ALL clear names at their place in the pipeline", 2)
        .send(0, [p("a1", "SELECT 1"), sync()])
        .wait(0)
        .send(0, [p("b1", "SELECT 2"), p("", "DEALLOCATE ALL"), b(""), e(), p("c1", "SELECT 3"), sync()])
        .wait(0)
        .send(0, [b("a1"), e(), sync(), b("b1"), e(), sync(), b("c1"), e(), sync()])
        .wait(0)
        .send(1, [p("a1", "SELECT 1"), b("a1"), e(), sync()])
        .wait(1)
        .q(0, "DEALLOCATE ALL")
        .send(0, run("c1"))
        .wait(0)
        .send(0, [p("d1", "SELECT 4"), sync()])
        .wait(0)
        .q(0, "DISCARD ALL")
        .send(0, run("d1"))
        .wait(0)
        .send(0, [p("e1", "SELECT 5"), p("", "DISCARD ALL"), b(""), e(), p("f1", "SELECT 6"), b("f1"), e(), sync()])
        .wait(0)
        .send(0, [b("e1"), e(), sync(), b("f1"), e(), sync()])
        .wait(0)
        .terminate(0)
        .send(1, run("a1"))
        .wait(1)
        .build()
}

/// S2 DEALLOCATE [PREPARE] name of a protocol-level statement.
fn s2() -> Scenario {
    Scenario::new("S2 DEALLOCATE [PREPARE] name of a protocol-level statement", 2)
        .send(
            0,
            [
                p("ps2", "SELECT 1"),
                p("ps2c", "SELECT 2"),
                p("Mixed", "SELECT 3"),
                p("ps2e", "SELECT 4"),
                p("Upper", "SELECT 5"),
                sync(),
            ],
        )
        .wait(0)
        .q(0, "DEALLOCATE ps2")
        .q(0, "DEALLOCATE PREPARE PS2C")
        .q(0, "DEALLOCATE \"Mixed\"")
        .q(0, "DEALLOCATE nope")
        .q(0, "DEALLOCATE Upper")
        // (By the extended protocol, `DEALLOCATE name` of a protocol-level statement is not
        // mapped: README, transaction pooling.)
        .send(0, [run("ps2"), run("ps2c"), run("Mixed"), run("ps2e"), run("Upper")].concat())
        .wait(0)
        .send(1, [p("ps2", "SELECT 1"), b("ps2"), e(), sync()])
        .wait(1)
        .build()
}

/// S3 command tags are exact (DEALLOCATE ALL, DISCARD ALL, ...).
fn s3() -> Scenario {
    Scenario::new("S3 command tags are exact (DEALLOCATE ALL, DISCARD ALL, ...)", 1)
        .q(0, "DEALLOCATE ALL")
        .q(0, "DEALLOCATE PREPARE ALL")
        .q(0, "DISCARD PLANS")
        .q(0, "DISCARD SEQUENCES")
        .q(0, "DISCARD TEMP")
        .q(0, "DISCARD ALL")
        .send(0, [p("", "DEALLOCATE ALL"), b(""), e(), sync(), p("", "DISCARD ALL"), b(""), e(), sync()])
        .wait(0)
        .q(0, "deallocate all; discard all")
        .build()
}

/// S4 SQL PREPARE/EXECUTE work for their client only, never a stray 26000.
fn s4() -> Scenario {
    Scenario::new("S4 SQL PREPARE/EXECUTE work for their client only, never a stray 26000", 2)
        .q(0, "PREPARE q4(int) AS SELECT $1 + 1 AS next")
        .q(0, "EXECUTE q4(41)")
        .sq(1, "EXECUTE q4(1)")
        .send(0, [p("", "EXECUTE q4(1)"), b(""), e(), sync()])
        .wait(0)
        .q(0, "SELECT name, statement FROM pg_prepared_statements WHERE from_sql ORDER BY name")
        .q(0, "DEALLOCATE q4")
        .q(0, "EXECUTE q4(1)")
        .q(0, "PREPARE q4b AS SELECT 'again' AS a")
        .q(0, "EXECUTE q4b")
        .terminate(0)
        .wait(1)
        .q(1, "PREPARE q4(int) AS SELECT $1 * 10 AS times")
        .q(1, "EXECUTE q4(5)")
        .build()
}

/// S5 a server the proxy reset has forgotten its statements and settings.
fn s5() -> Scenario {
    Scenario::new("S5 a server the proxy reset has forgotten its statements and settings", 3)
        .send(0, [p("s5", "SELECT 5 AS five"), b("s5"), e(), sync()])
        .wait(0)
        .q(2, "SET work_mem = '7MB'")
        .send(2, [p("c5", "SELECT 5 AS five"), b("c5"), e(), sync()])
        .wait(2)
        .terminate(2)
        .send(1, [p("b5", "SELECT 5 AS five"), b("b5"), e(), sync()])
        .wait(1)
        .send(0, run("s5"))
        .wait(0)
        .q(1, "SHOW work_mem")
        .build()
}

/// ST1 reported parameters belong to each client, from its startup packet on.
fn st1() -> Scenario {
    let settings = "SELECT current_setting('application_name') AS app, current_setting('DateStyle') AS ds, \
        current_setting('TimeZone') AS tz, current_setting('IntervalStyle') AS ist, \
        timestamptz '2024-01-02 03:04:05+00' AS ts, interval '1 day 2 hours' AS iv, 0.1::float8 AS f, chr(233) AS e";
    Scenario::new("ST1 reported parameters belong to each client, from its startup packet on", 3)
        .startup(
            0,
            &[
                ("application_name", "diff_a"),
                ("DateStyle", "SQL, DMY"),
                ("TimeZone", "Asia/Tokyo"),
                ("IntervalStyle", "sql_standard"),
            ],
        )
        .startup(
            1,
            &[
                ("application_name", "diff_b"),
                ("TimeZone", "America/New_York"),
                ("client_encoding", "LATIN1"),
                ("extra_float_digits", "0"),
            ],
        )
        .q(0, settings)
        .q(1, settings)
        .q(2, settings)
        .send(0, [p("", settings), b(""), e(), sync()])
        .send(1, [p("", settings), b(""), e(), sync()])
        .send(2, [p("", settings), b(""), e(), sync()])
        .wait(0)
        .wait(1)
        .wait(2)
        .q(2, "BEGIN")
        .q(2, "SET LOCAL TimeZone = 'Europe/Paris'")
        .q(2, settings)
        .q(2, "COMMIT")
        .q(0, "SET application_name = 'renamed'")
        .q(0, settings)
        .terminate(0)
        .q(1, settings)
        .q(2, settings)
        .build()
}

/// ST2 a session SET never leaks to another client.
fn st2() -> Scenario {
    Scenario::new("ST2 a session SET never leaks to another client", 3)
        .q(0, "SET statement_timeout = '1s'")
        .q(0, "SHOW statement_timeout")
        .q(0, "SELECT set_config('work_mem', '7MB', false)")
        .send(0, [p("", "SET search_path = pg_catalog"), b(""), e(), sync()])
        .wait(0)
        .q(0, "SHOW search_path")
        .q(0, "SHOW work_mem")
        .sq(1, "SHOW statement_timeout")
        .sq(1, "SHOW work_mem")
        .sq(1, "SHOW search_path")
        .terminate(0)
        .wait(1)
        .q(2, "SET lock_timeout = '3s'")
        .disconnect(2)
        .q(1, "SHOW lock_timeout")
        .build()
}

/// ST3 SET LOCAL, set_config(..., true) and SET TRANSACTION stay in their transaction.
fn st3() -> Scenario {
    Scenario::new("ST3 SET LOCAL, set_config(..., true) and SET TRANSACTION stay in their transaction", 2)
        .q(0, "BEGIN")
        .q(0, "SET LOCAL work_mem = '9MB'")
        .q(0, "SHOW work_mem")
        .q(0, "COMMIT")
        .q(1, "SHOW work_mem")
        .q(0, "SHOW work_mem")
        .q(0, "SELECT set_config('work_mem', '10MB', true), current_setting('work_mem')")
        .q(1, "SHOW work_mem")
        .q(0, "BEGIN")
        .q(0, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .q(0, "SHOW transaction_isolation")
        .q(0, "COMMIT")
        .q(0, "SHOW transaction_isolation")
        .q(1, "SHOW transaction_isolation")
        .q(0, "BEGIN; SET LOCAL statement_timeout = '5s'; SHOW statement_timeout; COMMIT")
        .q(1, "SHOW statement_timeout")
        .q(0, "SET LOCAL work_mem = '11MB'")
        .q(0, "SHOW work_mem")
        .q(1, "SHOW work_mem")
        .build()
}

/// ST4 a SET in a transaction persists on COMMIT, is undone on ROLLBACK (TO SAVEPOINT).
fn st4() -> Scenario {
    Scenario::new("ST4 a SET in a transaction persists on COMMIT, is undone on ROLLBACK (TO SAVEPOINT)", 2)
        .q(0, "BEGIN")
        .q(0, "SET work_mem = '11MB'")
        .q(0, "ROLLBACK")
        .q(0, "SHOW work_mem")
        .q(0, "BEGIN")
        .q(0, "SET work_mem = '12MB'")
        .q(0, "SAVEPOINT s")
        .q(0, "SET work_mem = '13MB'")
        .q(0, "ROLLBACK TO SAVEPOINT s")
        .q(0, "SHOW work_mem")
        .q(0, "COMMIT")
        .q(0, "SHOW work_mem")
        .sq(1, "SHOW work_mem")
        .terminate(0)
        .wait(1)
        .build()
}

/// ST5 RESET, RESET ALL and DISCARD ALL from the client.
fn st5() -> Scenario {
    Scenario::new("ST5 RESET, RESET ALL and DISCARD ALL from the client", 2)
        .q(0, "SET work_mem = '14MB'")
        .q(0, "RESET work_mem")
        .q(0, "SHOW work_mem")
        .q(0, "SET work_mem = '15MB'")
        .q(0, "SET statement_timeout = '2s'")
        .q(0, "RESET ALL")
        .q(0, "SELECT current_setting('work_mem'), current_setting('statement_timeout')")
        .q(0, "SET work_mem = '16MB'")
        .q(0, "DISCARD ALL")
        .q(0, "SHOW work_mem")
        .q(0, "SET statement_timeout = '3s'")
        .sq(1, "SHOW statement_timeout")
        .terminate(0)
        .wait(1)
        .build()
}

/// ST6 LISTEN pins: notifications reach the listener and nobody else.
fn st6_listen(x: &Ctx) -> Scenario {
    let channel = format!("{}_ch", x.schema);
    Scenario::new("ST6 LISTEN pins: notifications reach the listener and nobody else", 2)
        .q(0, &format!("LISTEN {channel}"))
        .admin(&format!("NOTIFY {channel}, 'one'"))
        .tag(0, b'A', 1)
        .q(0, "SELECT 1")
        .admin(&format!("SELECT pg_notify('{channel}', 'two')"))
        .tag(0, b'A', 2)
        .q(0, "UNLISTEN *")
        .terminate(0)
        .q(1, "SELECT 'b'")
        .admin(&format!("NOTIFY {channel}, 'three'"))
        .q(1, "SELECT 'b2'")
        .build()
}

/// ST6 a session advisory lock pins; the _xact_ kind does not.
fn st6_advisory(x: &Ctx) -> Scenario {
    let key = x.lock_base;
    Scenario::new("ST6 a session advisory lock pins; the _xact_ kind does not", 4)
        .q(0, &format!("SELECT pg_advisory_lock({key})"))
        .q(0, &format!("SELECT pg_advisory_unlock({key})"))
        .q(0, "BEGIN")
        .q(0, &format!("SELECT pg_advisory_xact_lock({})", key + 1))
        .q(0, "COMMIT")
        .q(0, &format!("SELECT pg_advisory_lock({key})"))
        .terminate(0)
        // Blocks until the lock is free: it must become free.
        .q(1, &format!("SELECT pg_advisory_lock({key})"))
        .q(1, &format!("SELECT pg_advisory_unlock({key}), pg_advisory_unlock({key})"))
        .q(1, "BEGIN")
        .q(1, &format!("SELECT pg_advisory_xact_lock({key})"))
        .q(1, "COMMIT")
        // Client 1 took a session lock: pinned until it leaves, even though it let go.
        .terminate(1)
        .q(2, &format!("SELECT pg_try_advisory_xact_lock({key})"))
        .q(2, "BEGIN")
        .q(2, &format!("SELECT pg_try_advisory_xact_lock({})", key + 1))
        .q(2, "COMMIT")
        // Transaction-scoped locks pinned nothing: another client gets the server.
        .q(3, &format!("SELECT pg_try_advisory_xact_lock({}), pg_try_advisory_lock({key})", key + 1))
        .build()
}

/// ST6 temp tables pin unless ON COMMIT DROP.
fn st6_temp() -> Scenario {
    Scenario::new("ST6 temp tables pin unless ON COMMIT DROP", 3)
        .q(0, "CREATE TEMP TABLE tt6 (a int)")
        .q(0, "INSERT INTO tt6 VALUES (1)")
        .q(0, "CREATE TEMP VIEW tv6 AS SELECT a + 1 AS b FROM tt6")
        .q(0, "SELECT * FROM tt6, tv6")
        .sq(1, "SELECT * FROM tt6")
        .terminate(0)
        .wait(1)
        .q(2, "BEGIN")
        .q(2, "CREATE TEMP TABLE tc6 (a int) ON COMMIT DROP")
        .q(2, "INSERT INTO tc6 VALUES (2)")
        .q(2, "SELECT * FROM tc6")
        .q(2, "COMMIT")
        .q(1, "SELECT * FROM tc6")
        .q(2, "SELECT * FROM tc6")
        .build()
}

/// ST6 DECLARE ... WITH HOLD pins; a plain cursor ends with its transaction.
fn st6_hold_cursor() -> Scenario {
    Scenario::new("ST6 DECLARE ... WITH HOLD pins; a plain cursor ends with its transaction", 2)
        .q(0, "DECLARE c6 CURSOR WITH HOLD FOR SELECT g FROM generate_series(1, 3) g")
        .q(0, "FETCH 1 FROM c6")
        .sq(1, "FETCH 1 FROM c6")
        .q(0, "FETCH 1 FROM c6")
        .q(0, "CLOSE c6")
        .terminate(0)
        .wait(1)
        .q(1, "BEGIN")
        .q(1, "DECLARE c7 CURSOR FOR SELECT 1 AS one")
        .q(1, "FETCH ALL FROM c7")
        .q(1, "COMMIT")
        .q(1, "FETCH 1 FROM c7")
        .build()
}

/// ST6 LOAD (refused to this role, as PostgreSQL refuses it).
fn st6_load() -> Scenario {
    Scenario::new("ST6 LOAD (refused to this role, as PostgreSQL refuses it)", 2)
        .q(0, "LOAD 'plpgsql'")
        .q(0, "SELECT 1")
        .terminate(0)
        .q(1, "SELECT 2")
        .build()
}

/// ST6 SET ROLE and SET SESSION AUTHORIZATION pin and never leak.
fn st6_role(x: &Ctx) -> Scenario {
    let role = &x.role;
    Scenario::new("ST6 SET ROLE and SET SESSION AUTHORIZATION pin and never leak", 2)
        .q(0, &format!("SET ROLE {role}"))
        .q(0, "SELECT current_user, session_user")
        .q(0, &format!("SET SESSION AUTHORIZATION {}", crate::support::SCRAM_USER))
        .q(0, "SELECT current_user, session_user")
        .q(0, &format!("SET ROLE {role}"))
        .sq(1, "SELECT current_user, session_user")
        .terminate(0)
        .wait(1)
        .q(1, "BEGIN")
        .q(1, &format!("SET LOCAL ROLE {role}"))
        .q(1, "SELECT current_user")
        .q(1, "COMMIT")
        .q(1, "SELECT current_user")
        .build()
}

/// ST7 a pinned server is reset before reuse: locks, temp tables, statements, settings.
fn st7(x: &Ctx) -> Scenario {
    let key = x.lock_base + 2;
    let temp = format!("{}_tt7", x.schema);
    let channel = format!("{}_ch7", x.schema);
    Scenario::new("ST7 a pinned server is reset before reuse: locks, temp tables, statements, settings", 2)
        .q(0, &format!("SELECT pg_advisory_lock({key})"))
        .q(0, &format!("CREATE TEMP TABLE {temp} (a int)"))
        .q(0, "PREPARE q7 AS SELECT 7")
        .q(0, "SET work_mem = '17MB'")
        .q(0, &format!("LISTEN {channel}"))
        .disconnect(0)
        // The next client arrives after the pinned one has gone.
        .connect(1)
        .q(1, &format!("SELECT pg_advisory_lock({key})"))
        .q(1, &format!("SELECT pg_advisory_unlock({key}), pg_advisory_unlock({key})"))
        .q(1, "EXECUTE q7")
        // Only the session's own temp tables resolve; another session's may take a moment to go
        // (when PostgreSQL or a reset drops them), which this client must not be able to tell.
        .q(1, &format!("SELECT count(*) FROM {temp}"))
        .q(1, "SHOW work_mem")
        .admin(&format!("NOTIFY {channel}, 'nobody listens'"))
        .q(1, "SELECT 'no notification before this'")
        .build()
}

/// ST8 currval/lastval within the transaction that called nextval.
fn st8(x: &Ctx) -> Scenario {
    let seq = x.t("seq8");
    // The policy (README, transaction pooling): currval and lastval hold within the
    // transaction that called nextval; after it, the next transaction may run on a connection
    // where another client's nextval set them, so no scenario asks for them there.
    Scenario::new("ST8 currval/lastval within the transaction that called nextval", 2)
        .setup(&format!("DROP SEQUENCE IF EXISTS {seq}; CREATE SEQUENCE {seq}"))
        .q(0, "BEGIN")
        .q(0, &format!("SELECT nextval('{seq}')"))
        .q(0, &format!("SELECT currval('{seq}'), lastval()"))
        .q(0, "COMMIT")
        .q(1, &format!("SELECT nextval('{seq}'), currval('{seq}'), lastval()"))
        .q(1, "BEGIN")
        .q(1, &format!("SELECT nextval('{seq}')"))
        .q(1, &format!("SELECT currval('{seq}'), lastval()"))
        .q(1, "ROLLBACK")
        .build()
}
