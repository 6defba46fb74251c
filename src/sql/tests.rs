use proptest::prelude::*;

use super::PinReason::*;
use super::Statement::{self, *};
use super::lexer::{Kind, Lexer, StrKind, Token};
use super::split::Splitter;
use super::{classify, literal};

fn set(name: &str, value: &str) -> Statement {
    Set { name: name.into(), value: value.into() }
}

fn reset(name: &str) -> Statement {
    Reset { name: name.into() }
}

/// Runs `(sql, expected statements)` cases and reports every mismatch at once.
fn check(cases: &[(&str, &[Statement])]) {
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(sql, expected)| {
            let got = classify(sql);
            (got != *expected).then(|| format!("{sql:?}\n    expected {expected:?}\n         got {got:?}"))
        })
        .collect();
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn splits_statements_outside_quotes_and_comments() {
    check(&[
        ("", &[]),
        ("  ;; -- nothing\n /* at all */ ;", &[]),
        ("SELECT 1; SELECT 2", &[Plain, Plain]),
        ("SELECT 1;", &[Plain]),
        ("SELECT 1; LISTEN x; SELECT 2", &[Plain, Pin(Listen), Plain]),
        ("SELECT 'LISTEN x'", &[Plain]),
        ("SELECT 'it''s; LISTEN x'", &[Plain]),
        ("SELECT $$; LISTEN x$$", &[Plain]),
        ("SELECT $a$ $$ ; LISTEN x $$ $a$; LISTEN y", &[Plain, Pin(Listen)]),
        ("SELECT $a$ $b$ ; LISTEN x $b$ $a$", &[Plain]),
        ("SELECT E'\\'; LISTEN x'", &[Plain]),
        ("SELECT e'it''s\\\\'; LISTEN x", &[Plain, Pin(Listen)]),
        // With standard_conforming_strings a backslash is an ordinary character.
        ("SELECT 'a\\'; LISTEN x", &[Plain, Pin(Listen)]),
        ("SELECT U&'d\\0061t'; LISTEN x", &[Plain, Pin(Listen)]),
        ("SELECT U&'d!0061t' UESCAPE '!'; LISTEN x", &[Plain, Pin(Listen)]),
        ("SELECT B'101', X'1F', N'x;'; LISTEN x", &[Plain, Pin(Listen)]),
        ("SELECT \"LISTEN; x\"", &[Plain]),
        ("SELECT \"a\"\"; LISTEN x\"", &[Plain]),
        ("SELECT U&\"a;\" UESCAPE '!'; LISTEN x", &[Plain, Pin(Listen)]),
        ("/* LISTEN x; */ SELECT 1", &[Plain]),
        ("/* outer /* inner */ LISTEN x; */ SELECT 1", &[Plain]),
        ("-- LISTEN x\nSELECT 1", &[Plain]),
        ("-- LISTEN x\rSELECT 1; LISTEN y", &[Plain, Pin(Listen)]),
        ("SELECT 1 -- ; LISTEN x", &[Plain]),
        ("SELECT 1 --; LISTEN x\n; LISTEN y", &[Plain, Pin(Listen)]),
        ("SELECT 2 */* c; */ 3; LISTEN x", &[Plain, Pin(Listen)]),
        ("SELECT /* unterminated ; LISTEN x", &[Plain]),
        ("SELECT /* /* */ still a comment ; LISTEN x", &[Plain]),
        ("SELECT 'unterminated ; LISTEN x", &[Plain]),
        ("SELECT E'unterminated \\", &[Plain]),
        ("SELECT \"unterminated ; LISTEN x", &[Plain]),
        ("SELECT $tag$ unterminated ; LISTEN x", &[Plain]),
        ("SELECT a$$b; LISTEN x", &[Plain, Pin(Listen)]),
        ("SELECT $1; LISTEN x", &[Plain, Pin(Listen)]),
        ("SELECT $; LISTEN x", &[Plain, Pin(Listen)]),
        ("SELECT (1; LISTEN x)", &[Plain]),
        ("SELECT 1); LISTEN x", &[Plain, Pin(Listen)]),
        ("SELECT 'ünïcödé 😀' AS \"ç\"; LISTEN 😀", &[Plain, Pin(Listen)]),
        ("\u{feff}\u{0}\u{7f}\\{}; LISTEN x", &[Plain, Pin(Listen)]),
        ("lIsTeN x", &[Pin(Listen)]),
        ("\t\r\n LISTEN/**/x", &[Pin(Listen)]),
        ("BEGIN; SELECT 1; COMMIT", &[TransactionControl, Plain, TransactionControl]),
        ("BEGIN; SET LOCAL x.y = 1; COMMIT", &[TransactionControl, Plain, TransactionControl]),
        ("start transaction isolation level serializable; end", &[TransactionControl, TransactionControl]),
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; \
             SELECT CASE WHEN true THEN 1 END; END; LISTEN x",
            &[Plain, Pin(Listen)],
        ),
        ("CREATE OR REPLACE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC SELECT pg_advisory_lock(1); END", &[Plain]),
        ("CREATE FUNCTION f() RETURNS void AS $$ LISTEN x; SELECT pg_advisory_lock(1) $$ LANGUAGE sql", &[Plain]),
        ("CREATE FUNCTION f() RETURNS void AS 'LISTEN x; SET a.b = 1' LANGUAGE sql", &[Plain]),
        ("DO $$ BEGIN PERFORM pg_advisory_lock(1); LISTEN x; END $$", &[Plain]),
        ("DO $body$ BEGIN END $body$; LISTEN x", &[Plain, Pin(Listen)]),
    ]);
}

#[test]
fn set_statements() {
    let untracked: &[Statement] = &[Pin(UntrackedSet)];
    check(&[
        ("SET search_path TO public", &[set("search_path", "public")]),
        ("set Search_Path = 'My Schema'", &[set("search_path", "My Schema")]),
        ("SET search_path = \"B\"", &[set("search_path", "B")]),
        ("SET search_path = Public", &[set("search_path", "public")]),
        ("SET /* a */ search_path -- b\n TO /* c */ app", &[set("search_path", "app")]),
        ("SET SESSION statement_timeout = 5000", &[set("statement_timeout", "5000")]),
        ("SET statement_timeout TO '5s'", &[set("statement_timeout", "5s")]),
        ("SET x.y = -1", &[set("x.y", "-1")]),
        ("SET x.y=-1", &[set("x.y", "-1")]),
        ("SET x.y = +1.5", &[set("x.y", "1.5")]),
        ("SET x.y = 1.5e-3", &[set("x.y", "1.5e-3")]),
        ("SET x.y = .5", &[set("x.y", ".5")]),
        ("SET x.y = on", &[set("x.y", "on")]),
        ("SET x.y = TRUE", &[set("x.y", "true")]),
        ("SET myapp.user_id = 42", &[set("myapp.user_id", "42")]),
        ("SET \"MyApp\".\"X\" = 'v'", &[set("myapp.x", "v")]),
        ("SET \"myapp.x\" = 'v'", &[set("myapp.x", "v")]),
        ("SET local = 1", &[set("local", "1")]),
        ("SET session TO 1", &[set("session", "1")]),
        ("SET x.y TO 'it''s'", &[set("x.y", "it's")]),
        ("SET x.y TO E'a\\nb\\'c\\\\'", &[set("x.y", "a\nb'c\\")]),
        ("SET x.y TO e'\\x41\\101\\u00e9\\U0001F600\\q'", &[set("x.y", "AAé😀q")]),
        ("SET x.y TO E'\\uD83D\\uDE00'", &[set("x.y", "😀")]),
        ("SET x.y TO U&'d\\0061t\\+000061'", &[set("x.y", "data")]),
        ("SET x.y TO U&'d!0061t!!' UESCAPE '!'", &[set("x.y", "dat!")]),
        ("SET x.y TO $$a'b$$", &[set("x.y", "a'b")]),
        ("SET x.y TO $q$a$$b$q$", &[set("x.y", "a$$b")]),
        ("SET x.y TO $q$$$q$", &[set("x.y", "$")]),
        ("SET x.y TO ''", &[set("x.y", "")]),
        ("SET work_mem TO DEFAULT", &[reset("work_mem")]),
        ("SET work_mem = default", &[reset("work_mem")]),
        ("SET SESSION work_mem = default", &[reset("work_mem")]),
        ("SET work_mem = 'default'", &[set("work_mem", "default")]),
        ("SET LOCAL search_path = a", &[Plain]),
        ("SET LOCAL ROLE admin", &[Plain]),
        ("SET LOCAL TIME ZONE 'UTC'", &[Plain]),
        ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", &[Plain]),
        ("SET TRANSACTION SNAPSHOT '00000003-0000001B-1'", &[Plain]),
        ("SET CONSTRAINTS ALL DEFERRED", &[Plain]),
        ("SET transaction_isolation = 'serializable'", &[Plain]),
        ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", untracked),
        ("SET TIME ZONE 'UTC'", &[set("timezone", "UTC")]),
        ("SET SESSION TIME ZONE 'Europe/Paris'", &[set("timezone", "Europe/Paris")]),
        ("set time zone utc", &[set("timezone", "utc")]),
        ("SET TIME ZONE -8", &[set("timezone", "-8")]),
        ("SET TIME ZONE LOCAL", &[reset("timezone")]),
        ("SET TIME ZONE DEFAULT", &[reset("timezone")]),
        ("SET TimeZone = 'UTC'", &[set("timezone", "UTC")]),
        ("SET TIME ZONE INTERVAL '+00:00' HOUR TO MINUTE", untracked),
        ("SET NAMES 'UTF8'", &[set("client_encoding", "UTF8")]),
        ("SET NAMES DEFAULT", &[reset("client_encoding")]),
        ("SET NAMES", &[reset("client_encoding")]),
        ("SET NAMES utf8", untracked),
        ("SET SCHEMA 'app'", &[set("search_path", "app")]),
        ("SET XML OPTION DOCUMENT", &[set("xmloption", "document")]),
        ("SET xmloption = content", &[set("xmloption", "content")]),
        ("SET ROLE admin", &[Pin(Role)]),
        ("SET ROLE NONE", &[Pin(Role)]),
        ("SET role = 'admin'", &[Pin(Role)]),
        ("SET SESSION ROLE admin", &[Pin(Role)]),
        ("SET SESSION AUTHORIZATION 'u'", &[Pin(Role)]),
        ("SET SESSION SESSION AUTHORIZATION DEFAULT", &[Pin(Role)]),
        ("SET session_authorization = u", &[Pin(Role)]),
        ("SET standard_conforming_strings = off", untracked),
        ("SET standard_conforming_strings = on", &[set("standard_conforming_strings", "on")]),
        ("SET search_path = a, \"B\"", untracked),
        ("SET DateStyle = ISO, MDY", untracked),
        ("SET work_mem FROM CURRENT", untracked),
        ("SET x.y = 1 + 1", untracked),
        ("SET x.y = 0x1F", untracked),
        ("SET x.y = 1_000", untracked),
        ("SET x.y = $1", untracked),
        ("SET x.y = E'\\uD83D'", untracked),
        ("SET x.y = E'\\0'", untracked),
        ("SET \"a b\" = 1", untracked),
        ("SET \"\" = 1", untracked),
        ("SET x.y", untracked),
        ("SET x.y =", untracked),
        ("SET", untracked),
        ("SET x.y = 1; SET LOCAL x.y = 2; SET x.z TO 3", &[set("x.y", "1"), Plain, set("x.z", "3")]),
    ]);
}

#[test]
fn reset_statements() {
    check(&[
        ("RESET ALL", &[ResetAll]),
        ("reset all", &[ResetAll]),
        ("RESET \"all\"", &[reset("all")]),
        ("RESET search_path", &[reset("search_path")]),
        ("RESET MyApp.X", &[reset("myapp.x")]),
        ("RESET TIME ZONE", &[reset("timezone")]),
        ("RESET ROLE", &[Pin(Role)]),
        ("RESET SESSION AUTHORIZATION", &[Pin(Role)]),
        ("RESET session_authorization", &[Pin(Role)]),
        ("RESET TRANSACTION ISOLATION LEVEL", &[Plain]),
        ("RESET transaction_read_only", &[Plain]),
        ("RESET", &[Pin(UntrackedSet)]),
        ("RESET a b", &[Pin(UntrackedSet)]),
    ]);
}

#[test]
fn set_config_calls() {
    let untracked: &[Statement] = &[Pin(UntrackedSet)];
    check(&[
        ("SELECT set_config('search_path', 'app', false)", &[set("search_path", "app")]),
        ("select SET_CONFIG('Search_Path', 'app', FALSE)", &[set("search_path", "app")]),
        ("SELECT pg_catalog.set_config('search_path', '', false);", &[set("search_path", "")]),
        ("SELECT \"set_config\"('a.b', 'v', 'f') AS x", &[set("a.b", "v")]),
        ("SELECT set_config('a.b', 'v', false) x", &[set("a.b", "v")]),
        ("SELECT set_config ( 'a.b' , $$v$$ , NULL )", &[set("a.b", "v")]),
        ("SELECT set_config('a.b', NULL, false)", &[reset("a.b")]),
        ("SELECT set_config('a.b', 'v', true)", &[Plain]),
        ("SELECT set_config('a.b', 'v', 'on')", &[Plain]),
        ("SELECT set_config('a.b', 'v', ' Tr ')", &[Plain]),
        ("SELECT set_config($1, $2, true)", &[Plain]),
        ("SELECT 1 WHERE set_config('a.b', 'v', true) IS NOT NULL", &[Plain]),
        ("SELECT set_config('transaction_isolation', 'serializable', false)", &[Plain]),
        ("SELECT set_config('role', 'admin', false)", &[Pin(Role)]),
        ("SELECT set_config('a.b', $1, false)", untracked),
        ("SELECT set_config($1, 'v', false)", untracked),
        ("SELECT set_config('a.b', 'v', $1)", untracked),
        ("SELECT set_config('a.b', 'v', 'o')", untracked),
        ("SELECT set_config('a.b', 'v'::text, false)", untracked),
        ("SELECT set_config('a.b', 'v')", untracked),
        ("SELECT set_config('a.b', 'v', false", untracked),
        ("SELECT set_config('a.b', 'v', false), set_config('c.d', 'w', false)", untracked),
        ("SELECT set_config('a.b', 'v', false) FROM t", untracked),
        ("SELECT x.set_config('a.b', 'v', false) AS y, 1", untracked),
        ("SELECT * FROM t WHERE set_config('a.b', t.v, false) IS NULL", untracked),
        ("UPDATE t SET a = set_config('a.b', 'v', false)", untracked),
        ("SELECT 'set_config(''a.b'', ''v'', false)'", &[Plain]),
        ("SELECT set_config", &[Plain]),
    ]);
}

#[test]
fn advisory_locks() {
    let lock: &[Statement] = &[Pin(AdvisoryLock)];
    check(&[
        ("SELECT pg_advisory_lock(1)", lock),
        ("SELECT pg_advisory_lock_shared(1)", lock),
        ("SELECT pg_try_advisory_lock(1, 2)", lock),
        ("select PG_TRY_ADVISORY_LOCK_SHARED(1)", lock),
        ("SELECT pg_catalog.pg_advisory_lock(1)", lock),
        ("SELECT \"pg_advisory_lock\"(1)", lock),
        ("SELECT pg_advisory_lock /* c */ (1)", lock),
        ("SELECT * FROM jobs WHERE pg_try_advisory_lock(id) LIMIT 1", lock),
        ("COPY (SELECT pg_advisory_lock(1)) TO STDOUT", lock),
        ("SELECT pg_advisory_lock(1), set_config('a.b', 'v', false)", lock),
        ("PREPARE p AS SELECT pg_advisory_lock($1)", &[Pin(SqlPrepare)]),
        ("SELECT pg_advisory_xact_lock(1)", &[Plain]),
        ("SELECT pg_advisory_xact_lock_shared(1)", &[Plain]),
        ("SELECT pg_try_advisory_xact_lock(1)", &[Plain]),
        ("SELECT pg_try_advisory_xact_lock_shared(1)", &[Plain]),
        ("SELECT pg_advisory_unlock(1)", &[Plain]),
        ("SELECT pg_advisory_unlock_shared(1)", &[Plain]),
        ("SELECT pg_advisory_unlock_all()", &[Plain]),
        ("SELECT \"PG_ADVISORY_LOCK\"(1)", &[Plain]),
        ("SELECT pg_advisory_lock FROM t", &[Plain]),
        ("SELECT 'pg_advisory_lock(1)'", &[Plain]),
        ("SELECT 1 -- pg_advisory_lock(1)", &[Plain]),
    ]);
}

#[test]
fn prepared_statements_and_discard() {
    let long = "a".repeat(70);
    let long_sql = format!("DEALLOCATE {long}");
    let cut = &long[..63];
    check(&[
        ("PREPARE p (int) AS SELECT $1", &[Pin(SqlPrepare)]),
        ("prepare p as select 1", &[Pin(SqlPrepare)]),
        ("PREPARE TRANSACTION 'gid'", &[TransactionControl]),
        ("COMMIT PREPARED 'gid'", &[TransactionControl]),
        ("EXECUTE p(1)", &[Plain]),
        ("DEALLOCATE p", &[Deallocate("p".into())]),
        ("DEALLOCATE PREPARE P", &[Deallocate("p".into())]),
        ("DEALLOCATE \"My\"\"P\"", &[Deallocate("My\"P".into())]),
        ("DEALLOCATE U&\"\\0061B\"", &[Deallocate("aB".into())]),
        ("DEALLOCATE \"all\"", &[Deallocate("all".into())]),
        ("deallocate prepare", &[Deallocate("prepare".into())]),
        ("DEALLOCATE ALL", &[DeallocateAll]),
        ("DEALLOCATE PREPARE ALL", &[DeallocateAll]),
        (&long_sql, &[Deallocate(cut.into())]),
        ("DEALLOCATE", &[Plain]),
        ("DEALLOCATE 'p'", &[Plain]),
        ("DEALLOCATE \"\"", &[Plain]),
        ("DISCARD ALL", &[DiscardAll]),
        ("discard all;", &[DiscardAll]),
        ("DISCARD PLANS", &[Plain]),
        ("DISCARD TEMP", &[Plain]),
        ("DISCARD TEMPORARY", &[Plain]),
        ("DISCARD SEQUENCES", &[Plain]),
    ]);
}

#[test]
fn temporary_objects() {
    let temp: &[Statement] = &[Pin(TempObject)];
    check(&[
        ("CREATE TEMP TABLE t (a int)", temp),
        ("CREATE TEMPORARY TABLE t (a int) ON COMMIT DELETE ROWS", temp),
        ("CREATE LOCAL TEMP TABLE t (a int) ON COMMIT PRESERVE ROWS", temp),
        ("CREATE GLOBAL TEMPORARY SEQUENCE s", temp),
        ("CREATE OR REPLACE TEMP VIEW v AS SELECT 1", temp),
        ("create temp recursive view v (n) as select 1", temp),
        ("EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1", temp),
        ("CREATE TABLE pg_temp.t (a int)", temp),
        ("CREATE TABLE PG_TEMP.t (a int)", temp),
        ("CREATE TABLE \"pg_temp\".t (a int)", temp),
        ("CREATE TABLE pg_temp_3.t (a int)", temp),
        ("CREATE FUNCTION pg_temp.f() RETURNS int AS 'select 1' LANGUAGE sql", temp),
        ("SELECT * INTO TEMP t FROM x", temp),
        ("SELECT * INTO TEMPORARY TABLE t FROM x", temp),
        ("SELECT 1 AS a INTO LOCAL TEMP t", temp),
        ("WITH a AS (SELECT 1) SELECT * INTO TEMP t FROM a", temp),
        ("SELECT * INTO pg_temp.t FROM x", temp),
        ("SELECT * INTO TABLE pg_temp.t FROM x", temp),
        ("CREATE TEMP TABLE t (a int) ON COMMIT DROP", &[Plain]),
        ("create temp table t on commit drop as select 1", &[Plain]),
        ("CREATE TABLE pg_temp.t (a int) ON COMMIT DROP", &[Plain]),
        ("CREATE TABLE t (a int)", &[Plain]),
        ("CREATE TABLE temp (a int)", &[Plain]),
        ("CREATE TABLE \"PG_TEMP\".t (a int)", &[Plain]),
        ("CREATE TABLE pg_temporary.t (a int)", &[Plain]),
        ("CREATE UNLOGGED TABLE t (a int)", &[Plain]),
        ("SELECT * INTO temp FROM x", &[Plain]),
        ("SELECT * INTO t FROM x", &[Plain]),
        ("INSERT INTO temp VALUES (1)", &[Plain]),
        ("INSERT INTO temp SELECT 1", &[Plain]),
        ("WITH a AS (INSERT INTO temp VALUES (1) RETURNING *) SELECT * FROM a", &[Plain]),
        ("MERGE INTO temp USING s ON true WHEN MATCHED THEN DELETE", &[Plain]),
        ("SELECT * FROM pg_temp.t", &[Plain]),
        ("SELECT 'CREATE TEMP TABLE t ()'", &[Plain]),
    ]);
}

#[test]
fn cursors_listen_load_and_the_rest() {
    check(&[
        ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", &[Pin(HoldCursor)]),
        ("declare c binary no scroll cursor with hold for select 1", &[Pin(HoldCursor)]),
        ("DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1", &[Plain]),
        ("DECLARE c CURSOR FOR SELECT 1", &[Plain]),
        ("DECLARE c CURSOR FOR WITH hold AS (SELECT 1) SELECT * FROM hold", &[Plain]),
        ("FETCH 10 FROM c; CLOSE c; MOVE NEXT IN c", &[Plain, Plain, Plain]),
        ("LISTEN channel", &[Pin(Listen)]),
        ("UNLISTEN *", &[Plain]),
        ("NOTIFY channel, 'LISTEN'", &[Plain]),
        ("LOAD 'auto_explain'", &[Pin(Load)]),
        (
            "SAVEPOINT a; RELEASE SAVEPOINT a; ROLLBACK TO a; ROLLBACK",
            &[TransactionControl, TransactionControl, TransactionControl, TransactionControl],
        ),
        ("ALTER ROLE r SET search_path = a", &[Plain]),
        ("ALTER FUNCTION f() SET search_path = a", &[Plain]),
        ("UPDATE t SET a = 1 WHERE b = 2", &[Plain]),
        ("VACUUM; CHECKPOINT", &[Plain, Plain]),
        ("CALL p()", &[Plain]),
    ]);
}

#[test]
fn labels_are_distinct_snake_case() {
    let all = [Listen, SqlPrepare, AdvisoryLock, TempObject, HoldCursor, Load, Role, UntrackedSet];
    let labels: Vec<&str> = all.iter().map(|reason| reason.label()).collect();
    assert_eq!(
        labels,
        ["listen", "sql_prepare", "advisory_lock", "temp_object", "hold_cursor", "load", "role", "untracked_set"]
    );
}

#[test]
fn lexer_tokens() {
    let tokens = |sql| Lexer::new(sql).map(|t: Token| (t.kind, t.text)).collect::<Vec<_>>();
    assert_eq!(
        tokens("x=-1.5e-3::int"),
        [
            (Kind::Word, "x"),
            (Kind::Punct, "="),
            (Kind::Punct, "-"),
            (Kind::Number, "1.5e-3"),
            (Kind::Punct, "::"),
            (Kind::Word, "int")
        ]
    );
    assert_eq!(tokens("a @- b"), [(Kind::Word, "a"), (Kind::Punct, "@-"), (Kind::Word, "b")]);
    assert_eq!(tokens("0x1F+1"), [(Kind::Number, "0x1F"), (Kind::Punct, "+"), (Kind::Number, "1")]);
    assert_eq!(tokens("$a$ x $a$$1"), [(Kind::Str(StrKind::Dollar), " x "), (Kind::Param, "$1")]);
    assert_eq!(tokens("E'\\''"), [(Kind::Str(StrKind::Escape), "\\'")]);
    assert_eq!(tokens("u&'x' uescape '!'"), [(Kind::Str(StrKind::Unicode('!')), "x")]);
    assert_eq!(tokens("u&'x' uescape"), [(Kind::Str(StrKind::Unicode('\\')), "x"), (Kind::Word, "uescape")]);
    assert_eq!(tokens("U&\"a\"\"b\""), [(Kind::Quoted { unicode: Some('\\') }, "a\"\"b")]);
    assert_eq!(tokens("type'x'"), [(Kind::Word, "type"), (Kind::Str(StrKind::Standard), "x")]);
    assert_eq!(tokens("a--b\nc/*d*/e"), [(Kind::Word, "a"), (Kind::Word, "c"), (Kind::Word, "e")]);
    assert_eq!(tokens("Été"), [(Kind::Word, "Été")]);
}

#[test]
fn literal_values() {
    let first = |sql| Lexer::new(sql).next().unwrap();
    assert_eq!(literal::string(&first("'a''b'")).as_deref(), Some("a'b"));
    assert_eq!(literal::string(&first("E'\\t\\x7\\7'")).as_deref(), Some("\t\u{7}\u{7}"));
    assert_eq!(literal::string(&first("E'\\303\\251'")).as_deref(), Some("é"));
    assert_eq!(literal::string(&first("E'\\303'")), None);
    assert_eq!(literal::string(&first("E'\\777'")), None);
    assert_eq!(literal::string(&first("E'\\xz'")).as_deref(), Some("xz"));
    assert_eq!(literal::string(&first("E'\\u12'")), None);
    assert_eq!(literal::string(&first("E'\\uDE00'")), None);
    assert_eq!(literal::string(&first("U&'\\D83D\\DE00'")).as_deref(), Some("😀"));
    assert_eq!(literal::string(&first("U&'\\D83Dx'")), None);
    assert_eq!(literal::string(&first("U&'\\\\'")).as_deref(), Some("\\"));
    assert_eq!(literal::string(&first("x")), None);
    assert_eq!(literal::ident(&first("FoO")).as_deref(), Some("foo"));
    assert_eq!(literal::ident(&first("\"FoO\"")).as_deref(), Some("FoO"));
    let long = format!("\"{}\"", "é".repeat(40));
    assert_eq!(literal::ident(&first(&long)), Some("é".repeat(31)));
    assert!(literal::ident_is(&first("\"set_config\""), "set_config"));
    assert!(!literal::ident_is(&first("\"Set_Config\""), "set_config"));
}

/// `s` as the body of a standard string constant.
fn quote(s: &str) -> String {
    s.replace('\'', "''")
}

/// SQL-flavoured text: fragments that stress quoting, comments and the statements this
/// module looks for, in any order.
fn sqlish() -> impl Strategy<Value = String> {
    let fragments = prop::sample::select(vec![
        "'",
        "\"",
        "$$",
        "$a$",
        "$1",
        "E'",
        "U&'",
        "U&\"",
        "UESCAPE",
        "\\",
        "--",
        "/*",
        "*/",
        "\n",
        "\r",
        ";",
        "(",
        ")",
        ",",
        ".",
        "=",
        "-",
        "+",
        "::",
        " ",
        "SET",
        "LOCAL",
        "SESSION",
        "RESET",
        "ALL",
        "TO",
        "TIME",
        "ZONE",
        "LISTEN",
        "PREPARE",
        "DEALLOCATE",
        "DISCARD",
        "DECLARE",
        "WITH",
        "HOLD",
        "FOR",
        "CREATE",
        "TEMP",
        "TABLE",
        "ON",
        "COMMIT",
        "DROP",
        "SELECT",
        "INTO",
        "pg_temp",
        "set_config",
        "pg_advisory_lock",
        "BEGIN",
        "ATOMIC",
        "END",
        "CASE",
        "FUNCTION",
        "x",
        "1",
        "1e",
        "é",
        "😀",
    ]);
    prop::collection::vec(fragments, 0..40).prop_map(|parts| parts.concat())
}

/// [`classify`] without the shortcut for statements that hold no notable token.
fn classify_every_statement(sql: &str) -> Vec<Statement> {
    Splitter::new(sql).map(|piece| super::classify::statement(&Lexer::new(piece.text).collect::<Vec<_>>())).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn never_panics(sql in any::<String>(), mixed in sqlish()) {
        classify(&sql);
        classify(&mixed);
        for cut in 0..=mixed.len() {
            if mixed.is_char_boundary(cut) {
                classify(&mixed[..cut]);
            }
        }
    }

    #[test]
    fn shortcut_changes_nothing(sql in sqlish()) {
        prop_assert_eq!(classify(&sql), classify_every_statement(&sql));
    }

    #[test]
    fn quoted_text_is_inert(text in prop_oneof![any::<String>(), sqlish()]) {
        let plain = vec![Plain];
        prop_assert_eq!(classify(&format!("SELECT '{}'", quote(&text))), plain.clone());
        let escaped = text.replace('\\', "\\\\").replace('\'', "''");
        prop_assert_eq!(classify(&format!("SELECT E'{escaped}'")), plain.clone());
        prop_assert_eq!(classify(&format!("SELECT \"{}\"", text.replace('"', "\"\""))), plain.clone());
        if format!("{text}$q$").find("$q$") == Some(text.len()) {
            prop_assert_eq!(classify(&format!("SELECT $q${text}$q$")), plain.clone());
        }
        let line = text.replace(['\n', '\r'], " ");
        prop_assert_eq!(classify(&format!("-- {line}")), vec![]);
        prop_assert_eq!(classify(&format!("SELECT 1 -- {line}")), plain.clone());
        let block = text.replace('*', " ");
        prop_assert_eq!(classify(&format!("/* {block} */")), vec![]);
        prop_assert_eq!(classify(&format!("SELECT /* {block} */ 1")), plain);
    }

    #[test]
    fn set_values_round_trip(text in prop_oneof![any::<String>(), sqlish()]) {
        prop_assume!(!text.contains('\0'));
        let expected = vec![set("x.y", &text)];
        prop_assert_eq!(classify(&format!("SET x.y TO '{}'", quote(&text))), expected.clone());
        let escaped = text.replace('\\', "\\\\").replace('\'', "\\'");
        prop_assert_eq!(classify(&format!("SET x.y = E'{escaped}'")), expected.clone());
        prop_assert_eq!(classify(&format!("SELECT set_config('x.y', '{}', false)", quote(&text))), expected);
    }

    #[test]
    fn quoted_names_round_trip(name in "[^\\x00]{1,80}") {
        let mut cut = name.len().min(63);
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        let sql = format!("DEALLOCATE \"{}\"", name.replace('"', "\"\""));
        prop_assert_eq!(classify(&sql), vec![Deallocate(name[..cut].to_owned())]);
    }
}
