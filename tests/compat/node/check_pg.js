// node-postgres (`pg`, with pg-copy-streams for COPY) through lakebase-proxy.
// Run by tests/compat.rs with PGHOST/PGPORT/PGUSER/PGDATABASE set; prints one line per check:
// `CHECK <name> ok|FAIL|n/a [detail]`, or `MISSING <what>` when a package is not installed.
//
// Set by tests/compat.rs for its transaction-mode pass (see tests/compat/python/compat.py):
// COMPAT_MODE=transaction, the proxy pools by transaction: statements of one session may run
// on different server connections and BackendKeyData carries the proxy's key, so checks that
// compare pids say which pid they mean in each mode; COMPAT_LOCK=<path>, a directory that a
// check holding a server connection while it waits for another session (LISTEN/NOTIFY) creates
// first and removes after, so that two such checks never hold both shared connections.
'use strict'

let pg, copyFrom, copyTo
try {
  pg = require('pg')
  ;({ from: copyFrom, to: copyTo } = require('pg-copy-streams'))
} catch (e) {
  console.log(`MISSING ${e.message.split('\n')[0]} (run: cd tests/compat/node && npm ci)`)
  process.exit(2)
}
console.log(`VERSION pg ${require('pg/package.json').version}, pg-copy-streams ${require('pg-copy-streams/package.json').version}, Node.js ${process.versions.node}`)
const { pipeline } = require('node:stream/promises')
const { Readable, Writable } = require('node:stream')

// The same values every client uses (see tests/compat.rs).
const UNICODE = 'ünïcødé ✓ 漢字'
const UNICODE_CHARS = 12
const BYTES = Buffer.from([...Array(256).keys()])
const LARGE_ROWS = 100000
const LARGE_VALUE = 10 * 1024 * 1024
const CANCEL_AFTER_MS = 500
const CANCEL_LIMIT_MS = 5000
const TRANSACTION = process.env.COMPAT_MODE === 'transaction'
// Marks this program's statements and channels: copies of it run at the same time.
const TAG = `compat_node_${process.pid}`
const PREPARED_LOOKUP = 'SELECT name, (generic_plans + custom_plans)::int, from_sql FROM pg_prepared_statements WHERE strpos(statement, $1) > 0'
const fs = require('node:fs')

function equal (got, want, what = 'value') {
  const [g, w] = [JSON.stringify(got), JSON.stringify(want)]
  if (g !== w) throw new Error(`${what}: got ${g.slice(0, 120)}, want ${w.slice(0, 120)}`)
}

function ensure (condition, message) {
  if (!condition) throw new Error(message)
}

// A client connected from the PG* environment (no password), closed after `body`.
async function withClient (body) {
  const client = new pg.Client()
  await client.connect()
  try {
    return await body(client)
  } finally {
    await client.end()
  }
}

async function one (client, text, values) {
  return (await client.query({ text, values, rowMode: 'array' })).rows[0]
}

// Holds COMPAT_LOCK (see the top) while `body` runs, when it is set.
async function exclusive (body) {
  const path = process.env.COMPAT_LOCK
  if (!path) return body()
  const deadline = Date.now() + 60000
  for (;;) {
    try {
      fs.mkdirSync(path)
      break
    } catch (e) {
      if (e.code !== 'EEXIST') throw e
      if (Date.now() > deadline) throw new Error('COMPAT_LOCK still held by another check after 60s')
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
  }
  try {
    return await body()
  } finally {
    fs.rmdirSync(path)
  }
}

async function expectError (promise, sqlstate) {
  try {
    await promise
  } catch (e) {
    equal(e.code, sqlstate, 'sqlstate')
    return
  }
  throw new Error(`no error, expected ${sqlstate}`)
}

const checks = {
  // No values: node-postgres sends a simple Query, so several statements work.
  simple: () => withClient(async (c) => {
    await c.query('CREATE TEMP TABLE t (v int); INSERT INTO t VALUES (1), (2)')
    equal(await one(c, 'SELECT sum(v)::int FROM t'), [3])
  }),

  // With values: Parse/Bind/Execute with the unnamed statement.
  params: () => withClient(async (c) => {
    equal(await one(c, "SELECT $1::int + $2::int, $3::text || '!'", [40, 2, 'hi']), [42, 'hi!'])
  }),

  // A `name` makes node-postgres Parse once and reuse the named statement: later runs send
  // only Bind and Execute for it, and in transaction mode may each take another server
  // connection, where the proxy prepares the statement again.
  prepared: () => withClient(async (c) => {
    const text = `SELECT $1::int * 2 AS v /* ${TAG} */`
    const run = async (i) => equal((await c.query({ name: 'compat_double', text, values: [i] })).rows[0].v, i * 2)
    for (let i = 0; i < 6; i++) await run(i)
    // The last runs and the lookup in one transaction: one server connection. The server's
    // name is the proxy's in transaction mode, so the statement is found by its text; the
    // execution count shows the named statement was reused.
    await c.query('BEGIN')
    for (let i = 0; i < 2; i++) await run(i)
    const rows = (await c.query({ text: PREPARED_LOOKUP, values: [TAG], rowMode: 'array' })).rows
    await c.query('COMMIT')
    equal(rows.length, 1, 'server-side statements with this text')
    const [name, executions, fromSql] = rows[0]
    ensure(!fromSql, `${name} was prepared by SQL PREPARE`)
    ensure(executions >= 2, `${name} executed ${executions} time(s) on this server, want >= 2`)
    return `named query compat_double: ${name}, executed ${executions} times on the server`
  }),

  commit: () => withClient(async (c) => {
    await c.query('CREATE TEMP TABLE t (v int)')
    await c.query('BEGIN')
    await c.query('INSERT INTO t VALUES (1)')
    await c.query('COMMIT')
    equal(await one(c, 'SELECT count(*)::int FROM t'), [1])
  }),

  rollback: () => withClient(async (c) => {
    await c.query('CREATE TEMP TABLE t (v int)')
    await c.query('BEGIN')
    await c.query('INSERT INTO t VALUES (1)')
    await c.query('ROLLBACK')
    equal(await one(c, 'SELECT count(*)::int FROM t'), [0])
  }),

  error_recovery: () => withClient(async (c) => {
    await c.query('BEGIN')
    await expectError(c.query('SELECT 1 / 0'), '22012')
    await expectError(c.query('SELECT 1'), '25P02') // the failed transaction refuses more
    await c.query('ROLLBACK')
    equal(await one(c, "SELECT 'recovered'"), ['recovered'])
  }),

  copy_in: () => withClient(async (c) => {
    await c.query('CREATE TEMP TABLE c (id int, name text)')
    const lines = Array.from({ length: 1000 }, (_, i) => `${i}\t${UNICODE} ${i}\n`)
    await pipeline(Readable.from(lines), c.query(copyFrom('COPY c FROM STDIN')))
    equal(await one(c, 'SELECT count(*)::int, sum(id)::int, max(name) FROM c'), [1000, 499500, `${UNICODE} 999`])
    return 'pg-copy-streams'
  }),

  copy_out: () => withClient(async (c) => {
    const chunks = []
    const sink = new Writable({ write (chunk, _enc, done) { chunks.push(chunk); done() } })
    await pipeline(c.query(copyTo("COPY (SELECT g, 'ü' || g FROM generate_series(1, 10000) g) TO STDOUT")), sink)
    const lines = Buffer.concat(chunks).toString('utf8').trimEnd().split('\n')
    equal([lines.length, lines[lines.length - 1]], [10000, '10000\tü10000'])
    return 'pg-copy-streams'
  }),

  listen_notify: () => exclusive(() => withClient((listener) => withClient(async (sender) => {
    const received = new Promise((resolve, reject) => {
      listener.on('notification', resolve)
      setTimeout(() => reject(new Error('no notification within 5s')), 5000).unref()
    })
    await listener.query(`LISTEN ${TAG}`)
    // The NOTIFY and pg_backend_pid() in one statement: the pid of the server process that
    // sent it, in transaction mode too.
    const [pid] = await one(sender, 'SELECT pg_backend_pid() FROM pg_notify($1, $2)', [TAG, UNICODE])
    const n = await received
    equal([n.channel, n.payload], [TAG, UNICODE])
    equal(n.processId, pid, 'sender pid')
    // processID comes from the sender's BackendKeyData, relayed by the proxy in session mode
    // (in transaction mode it is the proxy's key).
    if (!TRANSACTION) equal(n.processId, sender.processID, 'sender pid from BackendKeyData')
  }))),

  cancel: () => withClient(async (c) => {
    const running = c.query('SELECT pg_sleep(30)')
    const started = Date.now()
    // node-postgres' cancel API: a second, unconnected Client sends the CancelRequest
    // with the first client's key.
    setTimeout(() => new pg.Client().cancel(c, c.activeQuery), CANCEL_AFTER_MS)
    await expectError(running, '57014')
    const took = Date.now() - started
    ensure(took < CANCEL_LIMIT_MS, `cancel took ${took} ms`)
    equal(await one(c, 'SELECT 1'), [1], 'after the cancel')
    return `cancelled after ${(took / 1000).toFixed(1)}s`
  }),

  bytea: () => withClient(async (c) => {
    const [got] = await one(c, 'SELECT $1::bytea', [BYTES])
    ensure(Buffer.isBuffer(got) && got.equals(BYTES), `got ${got && got.toString('hex').slice(0, 40)}`)
  }),

  unicode: () => withClient(async (c) => {
    equal(await one(c, `SELECT $1::text, char_length($1::text), '${UNICODE}'`, [UNICODE]), [UNICODE, UNICODE_CHARS, UNICODE])
  }),

  large_result: () => withClient(async (c) => {
    const r = await c.query({ text: "SELECT g, repeat('x', 100) FROM generate_series(1, $1::int) g", values: [LARGE_ROWS], rowMode: 'array' })
    equal([r.rows.length, r.rows[r.rows.length - 1][0]], [LARGE_ROWS, LARGE_ROWS], 'rows')
    equal((await one(c, "SELECT repeat('x', $1)", [LARGE_VALUE]))[0].length, LARGE_VALUE, 'value out')
    equal(await one(c, 'SELECT length($1::bytea)', [Buffer.alloc(LARGE_VALUE)]), [LARGE_VALUE], 'value in')
  }),

  concurrent: async () => {
    const pool = new pg.Pool({ max: 4, connectionTimeoutMillis: 10000 })
    try {
      const query = async () => {
        const c = await pool.connect()
        try {
          const r = await c.query('SELECT pg_backend_pid() AS pid FROM pg_sleep(0.2)')
          return [c.processID, r.rows[0].pid]
        } finally {
          c.release()
        }
      }
      const pids = await Promise.all(Array.from({ length: 8 }, query))
      // Session mode: each session is its own server process. Transaction mode: the pool's
      // sessions share the proxy's few server connections, so they are counted by the pid
      // the proxy issued each in BackendKeyData.
      const sessions = new Set(pids.map(([key, server]) => TRANSACTION ? key : server)).size
      const servers = new Set(pids.map(([, server]) => server)).size
      ensure(sessions >= 2, `only ${sessions} session(s) used`)
      return `pg.Pool, ${sessions} sessions` + (TRANSACTION ? ` on ${servers} server connection(s)` : '')
    } finally {
      await pool.end()
    }
  }
}

function report (name, status, detail = '') {
  console.log(`CHECK ${name} ${status} ${String(detail).replace(/\s+/g, ' ')}`.trimEnd())
}

async function main () {
  // One at a time, each on its own connections, so one failure cannot hide the others.
  for (const [name, check] of Object.entries(checks)) {
    try {
      report(name, 'ok', (await check()) || '')
    } catch (e) {
      report(name, 'FAIL', `${e.code ? e.code + ' ' : ''}${e.message}`)
    }
  }
}

main()
