// node-postgres (`pg`, with pg-copy-streams for COPY) through lakebase-proxy.
// Run by tests/compat.rs with PGHOST/PGPORT/PGUSER/PGDATABASE set; prints one line per check:
// `CHECK <name> ok|FAIL|n/a [detail]`, or `MISSING <what>` when a package is not installed.
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

  // A `name` makes node-postgres Parse once and reuse the named statement.
  prepared: () => withClient(async (c) => {
    for (let i = 0; i < 3; i++) {
      const r = await c.query({ name: 'compat_double', text: 'SELECT $1::int * 2 AS v', values: [i] })
      equal(r.rows[0].v, i * 2)
    }
    equal(await one(c, "SELECT count(*)::int FROM pg_prepared_statements WHERE name = 'compat_double'"), [1])
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

  listen_notify: () => withClient((listener) => withClient(async (sender) => {
    const received = new Promise((resolve, reject) => {
      listener.on('notification', resolve)
      setTimeout(() => reject(new Error('no notification within 5s')), 5000).unref()
    })
    await listener.query('LISTEN compat_node')
    await sender.query('SELECT pg_notify($1, $2)', ['compat_node', UNICODE])
    const n = await received
    equal([n.channel, n.payload], ['compat_node', UNICODE])
    // processID comes from the sender's BackendKeyData, relayed by the proxy.
    equal(n.processId, sender.processID, 'sender pid')
  })),

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
      const queries = Array.from({ length: 8 }, () => pool.query('SELECT pg_backend_pid() AS pid FROM pg_sleep(0.2)'))
      const pids = (await Promise.all(queries)).map((r) => r.rows[0].pid)
      const sessions = new Set(pids).size
      ensure(sessions >= 2, `only ${sessions} backend(s) used`)
      return `pg.Pool, ${sessions} sessions`
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
