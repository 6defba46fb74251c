// The PostgreSQL JDBC driver (pgjdbc) through lakebase-proxy. Run by tests/compat.rs with
// PGHOST/PGPORT/PGUSER/PGDATABASE set; prints `CHECK <name> ok|FAIL|n/a [detail]` per check.
//
// COMPAT_PREPARE_THRESHOLD=N adds prepareThreshold=N to every connection: 1 makes pgjdbc use
// a named server-side statement from the first execution, so prepared statements cross the
// proxy in every check; unset, pgjdbc's default (named from the 5th execution of a statement).
// Set by tests/compat.rs for its transaction-mode pass (see tests/compat/python/compat.py):
// COMPAT_MODE=transaction, the proxy pools by transaction: statements of one session may run
// on different server connections and BackendKeyData carries the proxy's key, so checks that
// compare pids say which pid they mean in each mode; COMPAT_LOCK=<path>, a directory that a
// check holding a server connection while it waits for another session (LISTEN/NOTIFY) creates
// first and removes after, so that two such checks never hold both shared connections.

import java.io.IOException;
import java.io.StringReader;
import java.io.StringWriter;
import java.nio.file.FileAlreadyExistsException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.Callable;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.PGStatement;
import org.postgresql.copy.CopyManager;

public class CheckJdbc {
    // The same values every client uses (see tests/compat.rs).
    static final String UNICODE = "ünïcødé ✓ 漢字";
    static final int UNICODE_CHARS = 12;
    static final int LARGE_ROWS = 100_000;
    static final int LARGE_VALUE = 10 * 1024 * 1024;
    static final byte[] BYTES = new byte[256];

    static {
        for (int i = 0; i < 256; i++) BYTES[i] = (byte) i;
    }

    static final String THRESHOLD = System.getenv("COMPAT_PREPARE_THRESHOLD");
    static final boolean TRANSACTION = "transaction".equals(System.getenv("COMPAT_MODE"));
    // Marks this program's statements and channels: copies of it run at the same time.
    static final String TAG = "compat_jdbc_" + ProcessHandle.current().pid();

    interface Check {
        String run() throws Exception; // null or a note
    }

    static String url(String extra) {
        // No password: the proxy trusts loopback clients.
        return "jdbc:postgresql://" + System.getenv("PGHOST") + ":" + System.getenv("PGPORT") + "/"
                + System.getenv("PGDATABASE") + "?user=" + System.getenv("PGUSER")
                + (THRESHOLD == null ? "" : "&prepareThreshold=" + THRESHOLD) + extra;
    }

    static Connection connect() throws SQLException {
        return DriverManager.getConnection(url(""));
    }

    static void equal(Object got, Object want, String what) {
        if (!java.util.Objects.deepEquals(got, want)) {
            throw new AssertionError(what + ": got " + got + ", want " + want);
        }
    }

    static void ensure(boolean condition, String message) {
        if (!condition) throw new AssertionError(message);
    }

    static Object one(Connection c, String sql) throws SQLException {
        try (Statement s = c.createStatement(); ResultSet r = s.executeQuery(sql)) {
            r.next();
            return r.getObject(1);
        }
    }

    static void expectError(Connection c, String sql, String sqlstate) {
        try (Statement s = c.createStatement()) {
            s.execute(sql);
        } catch (SQLException e) {
            equal(e.getSQLState(), sqlstate, "sqlstate");
            return;
        }
        throw new AssertionError(sql + " did not fail with " + sqlstate);
    }

    static String simple() throws Exception {
        // pgjdbc uses the extended protocol even for a plain Statement; preferQueryMode=simple
        // is its switch to simple Query messages.
        try (Connection c = DriverManager.getConnection(url("&preferQueryMode=simple"));
             Statement s = c.createStatement()) {
            s.execute("CREATE TEMP TABLE t (v int); INSERT INTO t VALUES (1), (2)");
            equal(one(c, "SELECT sum(v)::int FROM t"), 3, "sum");
        }
        return "preferQueryMode=simple";
    }

    static String params() throws Exception {
        try (Connection c = connect();
             PreparedStatement ps = c.prepareStatement("SELECT ?::int + ?, ?::text || '!'")) {
            ps.setInt(1, 40);
            ps.setInt(2, 2);
            ps.setString(3, "hi");
            try (ResultSet r = ps.executeQuery()) {
                r.next();
                equal(Arrays.asList(r.getInt(1), r.getString(2)), Arrays.asList(42, "hi!"), "row");
            }
        }
        return null;
    }

    static void runDouble(PreparedStatement ps, int i) throws SQLException {
        ps.setInt(1, i);
        try (ResultSet r = ps.executeQuery()) {
            r.next();
            equal(r.getInt(1), i * 2, "result");
        }
    }

    static String prepared() throws Exception {
        try (Connection c = connect(); PreparedStatement ps = c.prepareStatement("SELECT ?::int * 2 /* " + TAG + " */")) {
            // 6 runs reach the named statement with either threshold (1, or the default 5); in
            // autocommit each may take another server connection in transaction mode.
            for (int i = 0; i < 6; i++) runDouble(ps, i);
            ensure(ps.unwrap(PGStatement.class).isUseServerPrepare(), "pgjdbc did not use a server-side statement");
            // The last runs and the lookup in one transaction: one server connection. The
            // server's name is the proxy's in transaction mode, so the statement is found by
            // its text; the execution count shows the named statement was reused.
            c.setAutoCommit(false);
            for (int i = 0; i < 2; i++) runDouble(ps, i);
            List<Object[]> rows = new ArrayList<>();
            try (PreparedStatement lookup = c.prepareStatement("SELECT name, (generic_plans + custom_plans)::int, from_sql"
                    + " FROM pg_prepared_statements WHERE strpos(statement, ?) > 0")) {
                lookup.setString(1, TAG);
                try (ResultSet r = lookup.executeQuery()) {
                    while (r.next()) rows.add(new Object[] {r.getString(1), r.getInt(2), r.getBoolean(3)});
                }
            }
            c.commit();
            equal(rows.size(), 1, "server-side statements with this text");
            String name = (String) rows.get(0)[0];
            int executions = (Integer) rows.get(0)[1];
            ensure(!(Boolean) rows.get(0)[2], name + " was prepared by SQL PREPARE");
            ensure(executions >= 2, name + " executed " + executions + " time(s) on this server, want >= 2");
            return name + ", executed " + executions + " times on the server";
        }
    }

    static String commit() throws Exception {
        try (Connection c = connect(); Statement s = c.createStatement()) {
            s.execute("CREATE TEMP TABLE t (v int)");
            c.setAutoCommit(false);
            s.execute("INSERT INTO t VALUES (1)");
            c.commit();
            equal(one(c, "SELECT count(*)::int FROM t"), 1, "rows");
        }
        return null;
    }

    static String rollback() throws Exception {
        try (Connection c = connect(); Statement s = c.createStatement()) {
            s.execute("CREATE TEMP TABLE t (v int)");
            c.setAutoCommit(false);
            s.execute("INSERT INTO t VALUES (1)");
            c.rollback();
            equal(one(c, "SELECT count(*)::int FROM t"), 0, "rows");
        }
        return null;
    }

    static String errorRecovery() throws Exception {
        try (Connection c = connect()) {
            c.setAutoCommit(false);
            expectError(c, "SELECT 1 / 0", "22012");
            expectError(c, "SELECT 1", "25P02"); // the failed transaction refuses more
            c.rollback();
            equal(one(c, "SELECT 'recovered'"), "recovered", "after rollback");
        }
        return null;
    }

    static String copyIn() throws Exception {
        try (Connection c = connect(); Statement s = c.createStatement()) {
            s.execute("CREATE TEMP TABLE c (id int, name text)");
            StringBuilder data = new StringBuilder();
            for (int i = 0; i < 1000; i++) data.append(i).append('\t').append(UNICODE).append(' ').append(i).append('\n');
            CopyManager copy = c.unwrap(PGConnection.class).getCopyAPI();
            equal(copy.copyIn("COPY c FROM STDIN", new StringReader(data.toString())), 1000L, "rows copied");
            equal(one(c, "SELECT max(name) FROM c"), UNICODE + " 999", "max(name)");
        }
        return "CopyManager";
    }

    static String copyOut() throws Exception {
        try (Connection c = connect()) {
            StringWriter out = new StringWriter();
            CopyManager copy = c.unwrap(PGConnection.class).getCopyAPI();
            copy.copyOut("COPY (SELECT g, 'ü' || g FROM generate_series(1, 10000) g) TO STDOUT", out);
            String[] lines = out.toString().split("\n");
            equal(lines.length, 10000, "lines");
            equal(lines[lines.length - 1], "10000\tü10000", "last line");
        }
        return "CopyManager";
    }

    /** Holds COMPAT_LOCK (see the top) while `check` runs, when it is set. */
    static String exclusive(Check check) throws Exception {
        String lock = System.getenv("COMPAT_LOCK");
        if (lock == null) return check.run();
        Path path = Paths.get(lock);
        long deadline = System.nanoTime() + 60_000_000_000L;
        while (true) {
            try {
                Files.createDirectory(path);
                break;
            } catch (FileAlreadyExistsException e) {
                if (System.nanoTime() > deadline) throw new IOException("COMPAT_LOCK still held by another check after 60s");
                Thread.sleep(20);
            }
        }
        try {
            return check.run();
        } finally {
            Files.delete(path);
        }
    }

    static String listenNotify() throws Exception {
        return exclusive(() -> {
            try (Connection listener = connect(); Connection sender = connect()) {
                listener.createStatement().execute("LISTEN " + TAG);
                int pid;
                // The NOTIFY and pg_backend_pid() in one statement: the pid of the server
                // process that sent it, in transaction mode too.
                try (PreparedStatement ps = sender.prepareStatement("SELECT pg_backend_pid() FROM pg_notify(?, ?)")) {
                    ps.setString(1, TAG);
                    ps.setString(2, UNICODE);
                    try (ResultSet r = ps.executeQuery()) {
                        r.next();
                        pid = r.getInt(1);
                    }
                }
                PGNotification[] notes = listener.unwrap(PGConnection.class).getNotifications(5000);
                ensure(notes != null && notes.length > 0, "no notification within 5s");
                equal(notes[0].getName() + "/" + notes[0].getParameter(), TAG + "/" + UNICODE, "notification");
                equal(notes[0].getPID(), pid, "sender pid");
                if (!TRANSACTION) {
                    // BackendKeyData names the same server process (in transaction mode it
                    // carries the proxy's key).
                    equal(notes[0].getPID(), sender.unwrap(PGConnection.class).getBackendPID(), "sender pid from BackendKeyData");
                }
            }
            return null;
        });
    }

    static String cancel() throws Exception {
        try (Connection c = connect(); Statement s = c.createStatement()) {
            ExecutorService timer = Executors.newSingleThreadExecutor();
            timer.submit(() -> {
                Thread.sleep(500);
                s.cancel(); // a CancelRequest on a new connection, with this session's key
                return null;
            });
            timer.shutdown();
            long started = System.nanoTime();
            expectErrorOn(s, "SELECT pg_sleep(30)", "57014");
            double took = (System.nanoTime() - started) / 1e9;
            ensure(took < 5, "cancel took " + took + "s");
            equal(one(c, "SELECT 1"), 1, "after the cancel");
            return String.format("cancelled after %.1fs", took);
        }
    }

    static void expectErrorOn(Statement s, String sql, String sqlstate) {
        try {
            s.execute(sql);
        } catch (SQLException e) {
            equal(e.getSQLState(), sqlstate, "sqlstate");
            return;
        }
        throw new AssertionError(sql + " did not fail with " + sqlstate);
    }

    static String bytea() throws Exception {
        try (Connection c = connect(); PreparedStatement ps = c.prepareStatement("SELECT ?::bytea")) {
            ps.setBytes(1, BYTES);
            try (ResultSet r = ps.executeQuery()) {
                r.next();
                equal(r.getBytes(1), BYTES, "bytes");
            }
        }
        return null;
    }

    static String unicode() throws Exception {
        try (Connection c = connect();
             PreparedStatement ps = c.prepareStatement("SELECT ?::text, char_length(?::text), '" + UNICODE + "'")) {
            ps.setString(1, UNICODE);
            ps.setString(2, UNICODE);
            try (ResultSet r = ps.executeQuery()) {
                r.next();
                equal(Arrays.asList(r.getString(1), r.getInt(2), r.getString(3)),
                        Arrays.asList(UNICODE, UNICODE_CHARS, UNICODE), "row");
            }
        }
        return null;
    }

    static String largeResult() throws Exception {
        try (Connection c = connect()) {
            // With autocommit off and a fetch size, pgjdbc reads through a portal in batches
            // (Execute with a row limit, PortalSuspended), instead of all rows at once.
            c.setAutoCommit(false);
            try (PreparedStatement ps = c.prepareStatement("SELECT g, repeat('x', 100) FROM generate_series(1, ?) g")) {
                ps.setFetchSize(10_000);
                ps.setInt(1, LARGE_ROWS);
                int count = 0, last = 0;
                try (ResultSet r = ps.executeQuery()) {
                    while (r.next()) {
                        count++;
                        last = r.getInt(1);
                    }
                }
                equal(Arrays.asList(count, last), Arrays.asList(LARGE_ROWS, LARGE_ROWS), "rows");
            }
            c.commit();
            equal(((String) one(c, "SELECT repeat('x', " + LARGE_VALUE + ")")).length(), LARGE_VALUE, "value out");
            try (PreparedStatement ps = c.prepareStatement("SELECT length(?::bytea)")) {
                ps.setBytes(1, new byte[LARGE_VALUE]);
                try (ResultSet r = ps.executeQuery()) {
                    r.next();
                    equal(r.getInt(1), LARGE_VALUE, "value in");
                }
            }
        }
        return "fetched in batches of 10,000 (portal)";
    }

    static String concurrent() throws Exception {
        // pgjdbc has no pool of its own (applications add HikariCP or similar):
        // 4 threads with a connection each.
        ExecutorService threads = Executors.newFixedThreadPool(4);
        List<Future<int[]>> pids = new ArrayList<>();
        for (int i = 0; i < 4; i++) {
            Callable<int[]> work = () -> {
                try (Connection c = connect()) {
                    int server = (Integer) one(c, "SELECT pg_backend_pid() FROM pg_sleep(0.2)");
                    return new int[] {c.unwrap(PGConnection.class).getBackendPID(), server};
                }
            };
            pids.add(threads.submit(work));
        }
        threads.shutdown();
        // Session mode: each session is its own server process. Transaction mode: the
        // sessions share the proxy's few server connections, so they are told apart by the
        // pid the proxy issued each in BackendKeyData.
        Set<Integer> sessions = new HashSet<>();
        Set<Integer> servers = new HashSet<>();
        for (Future<int[]> pid : pids) {
            int[] pair = pid.get(10, TimeUnit.SECONDS);
            sessions.add(TRANSACTION ? pair[0] : pair[1]);
            servers.add(pair[1]);
        }
        equal(sessions.size(), 4, "distinct sessions");
        return "4 threads, no pool in pgjdbc" + (TRANSACTION ? "; on " + servers.size() + " server connection(s)" : "");
    }

    public static void main(String[] args) {
        System.out.println("VERSION pgjdbc " + org.postgresql.util.DriverInfo.DRIVER_VERSION
                + ", Java " + System.getProperty("java.version")
                + (THRESHOLD == null ? "" : ", prepareThreshold=" + THRESHOLD));
        Object[][] checks = {
            {"simple", (Check) CheckJdbc::simple},
            {"params", (Check) CheckJdbc::params},
            {"prepared", (Check) CheckJdbc::prepared},
            {"commit", (Check) CheckJdbc::commit},
            {"rollback", (Check) CheckJdbc::rollback},
            {"error_recovery", (Check) CheckJdbc::errorRecovery},
            {"copy_in", (Check) CheckJdbc::copyIn},
            {"copy_out", (Check) CheckJdbc::copyOut},
            {"listen_notify", (Check) CheckJdbc::listenNotify},
            {"cancel", (Check) CheckJdbc::cancel},
            {"bytea", (Check) CheckJdbc::bytea},
            {"unicode", (Check) CheckJdbc::unicode},
            {"large_result", (Check) CheckJdbc::largeResult},
            {"concurrent", (Check) CheckJdbc::concurrent},
        };
        // One at a time, each on its own connections, so one failure cannot hide the others.
        for (Object[] check : checks) {
            String line;
            try {
                String note = ((Check) check[1]).run();
                line = "ok" + (note == null ? "" : " " + note);
            } catch (Throwable e) {
                String state = e instanceof SQLException ? ((SQLException) e).getSQLState() + " " : "";
                line = "FAIL " + e.getClass().getSimpleName() + ": " + state + e.getMessage();
            }
            System.out.println(("CHECK " + check[0] + " " + line).replaceAll("\\s+", " ").trim());
        }
    }
}
