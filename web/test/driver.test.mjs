// The WebTransport driver, against an in-process fake WebTransport and a small scripted server
// built from the module's codec. What this cannot show is how Chromium itself behaves.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  connect, Reason, QuicfeedError, FrameDecoder, decodeMessage, encodeFrame, decodeDatagram,
  encodeLaneDatagram, webTransportResumeProof, toHex,
} from '../quicfeed.js';

const enc = (s) => new TextEncoder().encode(s);
const dec = (b) => new TextDecoder().decode(b);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const sessionError = () => Object.assign(new Error('Connection lost.'), { name: 'WebTransportError', source: 'session' });

/** One side of a fake bidirectional stream, or the datagram pair. */
function pipe(onClientWrite, onClientClose = () => {}) {
  let ctl;
  let dead = null;
  const readable = new ReadableStream({ start: (c) => void (ctl = c) });
  const writable = new WritableStream({
    write: (chunk) => {
      if (dead) throw dead;
      return onClientWrite(new Uint8Array(chunk));
    },
    close: () => onClientClose(),
  });
  return {
    client: { readable, writable },
    enqueue: (b) => { if (!dead) try { ctl.enqueue(b); } catch {} },
    fin: () => { try { ctl.close(); } catch {} },
    error: (e) => { dead = e; try { ctl.error(e); } catch {} },
  };
}

/** A tiny quicfeed server: the handshake, resume, numbered DATA with ACKs, replay. */
class FakeServer {
  constructor(opts = {}) {
    this.opts = opts;
    this.sessions = new Map();
    this.nextId = 1n;
    this.conns = [];
    this.closes = [];
    this.lane = [];
    this.received = [];
  }
  accept(wt) {
    const conn = { wt, chan: {}, session: null, established: false, replayPending: false, fins: {}, dead: false };
    this.conns.push(conn);
    return conn;
  }
  stream(conn) {
    const st = { decoder: new FrameDecoder(), channel: null };
    st.pipe = pipe((chunk) => this.onBytes(conn, st, chunk), () => (conn.fins[st.channel] = true));
    return st;
  }
  onBytes(conn, st, chunk) {
    if (conn.dead) return;
    if (st.channel === null) {
      st.channel = chunk[0] === 0 ? 'main' : 'feed';
      conn.chan[st.channel] = st;
      chunk = chunk.subarray(1);
      if (st.channel === 'feed' && conn.replayPending) this.replay(conn);
    }
    st.decoder.push(chunk);
    const work = [];
    for (let body; (body = st.decoder.next(1 << 24)); ) work.push(this.onMessage(conn, st.channel, decodeMessage(body)));
    return Promise.all(work);
  }
  send(conn, channel, msg) {
    conn.chan[channel].pipe.enqueue(encodeFrame(msg));
  }
  refuse(conn, reason, message) {
    this.send(conn, 'main', { type: 'CONN_FAILED', reason, message, retryAfterMs: 1000 });
    conn.chan.main.pipe.fin();
    setTimeout(() => conn.wt.kill(), 20);
  }
  async onMessage(conn, channel, m) {
    const s = conn.session;
    switch (m.type) {
      case 'CONN_INIT': {
        if (this.opts.refuse) return this.refuse(conn, Reason.SERVER_FULL, 'server full');
        const id = this.nextId++;
        conn.session = { id, credentials: dec(m.credentials), cred: crypto.getRandomValues(new Uint8Array(16)), out: { main: [], feed: [] }, seq: { main: 0n, feed: 0n }, next: { main: 0n, feed: 0n }, conn: null };
        this.sessions.set(id, conn.session);
        return this.send(conn, 'main', { type: 'CONN_INIT_REPLY', playerId: id, tokenA: new Uint8Array(16).fill(0xa0) });
      }
      case 'FEED_INIT':
        if (this.opts.silentFeedInits > 0) return void this.opts.silentFeedInits--;
        return this.send(conn, 'feed', { type: 'FEED_INIT_REPLY', tokenB: new Uint8Array(16).fill(0xb0) });
      case 'FINAL_AUTH':
        s.conn = conn;
        conn.established = true;
        return this.send(conn, 'main', { type: 'CONN_OK', maxMainFrame: 65536, maxFeedFrame: 65536, credential: s.cred, mainNext: 0n, feedNext: 0n });
      case 'RESUME': {
        const session = this.sessions.get(m.playerId);
        if (!session || this.opts.forget) return this.refuse(conn, Reason.UNKNOWN_SESSION, 'unknown session');
        const expected = await webTransportResumeProof(session.cred, m.playerId);
        if (toHex(expected) !== toHex(m.proof)) return this.refuse(conn, Reason.INVALID_TOKEN, 'invalid token');
        if (session.conn && !session.conn.dead) session.conn.wt.kill(); // SUPERSEDED
        session.cred = crypto.getRandomValues(new Uint8Array(16));
        this.trim(session, 'main', m.mainNext);
        this.trim(session, 'feed', m.feedNext);
        conn.session = session;
        session.conn = conn;
        this.send(conn, 'main', { type: 'CONN_OK', maxMainFrame: 65536, maxFeedFrame: 65536, credential: session.cred, mainNext: session.next.main, feedNext: session.next.feed });
        conn.replayPending = true;
        if (conn.chan.feed) this.replay(conn);
        return;
      }
      case 'DATA':
        if (m.seq < s.next[channel]) return;
        assert.equal(m.seq, s.next[channel], 'the client numbers its DATA in order');
        s.next[channel]++;
        this.received.push([channel, dec(m.payload)]);
        this.send(conn, channel, { type: 'ACK', next: s.next[channel] });
        if (channel === 'main' && this.opts.echo !== false) this.push(s, 'main', enc('echo:' + dec(m.payload)));
        return;
      case 'ACK':
        return this.trim(s, channel, m.next);
    }
  }
  trim(session, channel, next) {
    session.out[channel] = session.out[channel].filter((k) => k.seq >= next);
  }
  replay(conn) {
    conn.replayPending = false;
    conn.established = true;
    for (const c of ['main', 'feed']) for (const k of conn.session.out[c]) this.send(conn, c, { type: 'DATA', seq: k.seq, payload: k.payload });
  }
  push(session, channel, payload) {
    const seq = session.seq[channel]++;
    session.out[channel].push({ seq, payload });
    const conn = session.conn;
    if (conn && !conn.dead && conn.established && !conn.replayPending) this.send(conn, channel, { type: 'DATA', seq, payload });
  }
  finish(session) {
    session.conn.chan.main.pipe.fin();
    session.conn.chan.feed.pipe.fin();
  }
}

/** A fake WebTransport bound to a FakeServer. */
function fakeWebTransport(server) {
  return class FakeWebTransport {
    constructor(url, options) {
      this.url = url;
      this.options = options;
      this.conn = server.accept(this);
      this.streams = [];
      let resolveClosed, rejectClosed;
      this.closed = new Promise((res, rej) => ((resolveClosed = res), (rejectClosed = rej)));
      this._closed = { resolveClosed, rejectClosed };
      this.ready = server.opts.unreachable ? Promise.reject(sessionError()) : Promise.resolve();
      if (server.opts.unreachable) rejectClosed(sessionError());
      const dg = pipe((b) => void server.lane.push(decodeDatagram(b)));
      this.dg = dg;
      this.datagrams = { readable: dg.client.readable, writable: dg.client.writable, maxDatagramSize: 1200 };
    }
    async createBidirectionalStream() {
      const st = server.stream(this.conn);
      this.streams.push(st);
      return st.pipe.client;
    }
    close(info = {}) {
      server.closes.push(info);
      this.#end(() => this._closed.resolveClosed(info));
    }
    kill() {
      this.#end(() => this._closed.rejectClosed(sessionError()));
    }
    #end(settle) {
      if (this.conn.dead) return;
      this.conn.dead = true;
      for (const st of this.streams) st.pipe.error(sessionError());
      this.dg.error(sessionError());
      settle();
    }
  };
}

async function open(serverOpts = {}, options = {}) {
  const server = new FakeServer(serverOpts);
  const session = await connect({ url: 'https://127.0.0.1:4433/quicfeed', WebTransport: fakeWebTransport(server), credentials: 'ticket-42', ...options });
  return { server, session, s: () => server.sessions.get(session.playerId) };
}

const until = async (cond, ms = 2000) => {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await sleep(2);
  }
};

test('connect, then JSON both ways on main, and the feed', async () => {
  const { server, session, s } = await open({}, { serverCertificateHashes: ['AB:'.repeat(31) + 'AB', new Uint8Array(32)] });
  assert.equal(session.playerId, 1n);
  assert.equal(s().credentials, 'ticket-42');
  assert.equal(session.state, 'connected');
  const hashes = server.conns[0].wt.options.serverCertificateHashes;
  assert.equal(hashes.length, 2);
  assert.equal(hashes[0].algorithm, 'sha-256');
  assert.equal(hashes[0].value[0], 0xab);
  await session.main.sendJson({ move: [1, 2] });
  assert.equal(dec(await session.main.recv()), 'echo:{"move":[1,2]}');
  server.push(s(), 'feed', enc('{"tick":1}'));
  server.push(s(), 'feed', enc('{"tick":2}'));
  const got = [];
  for await (const v of session.feed.json()) {
    got.push(v.tick);
    if (got.length === 2) break;
  }
  assert.deepEqual(got, [1, 2]);
  assert.ok(session.rttMs >= 0);
  await session.close();
});

test('a refusal surfaces as a QuicfeedError with the server reason', async () => {
  await assert.rejects(open({ refuse: true }), (e) => e instanceof QuicfeedError && e.code === Reason.SERVER_FULL && e.detail === 'server full' && e.retryAfterMs === 1000);
});

test('FEED_INIT is retried when unanswered', async () => {
  const { session } = await open({ silentFeedInits: 1 }, { feedInitRetryMs: 30 });
  assert.equal(session.playerId, 1n);
  await session.close({ graceful: false });
});

test('dropConnection: the session resumes, nothing lost or duplicated, order kept', async () => {
  const { server, session, s } = await open({ echo: false });
  const events = [];
  for (const t of ['resuming', 'resumed']) session.addEventListener(t, () => events.push(t));
  await session.main.send(enc('a'));
  await until(() => server.received.length === 1);
  session.dropConnection();
  assert.equal(session.state, 'resuming');
  await session.main.send(enc('b')); // resolves at once: kept for the replay
  await session.feed.send(enc('f0'));
  server.push(s(), 'main', enc('while away'));
  await until(() => session.state === 'connected');
  await session.main.send(enc('c'));
  await until(() => server.received.length === 4);
  assert.deepEqual(server.received.filter((r) => r[0] === 'main').map((r) => r[1]), ['a', 'b', 'c']);
  assert.deepEqual(server.received.filter((r) => r[0] === 'feed').map((r) => r[1]), ['f0']);
  assert.equal(dec(await session.main.recv()), 'while away');
  assert.deepEqual(events, ['resuming', 'resumed']);
  assert.equal(session.stats.resumes, 1);
  assert.equal(server.closes[0].closeCode, Reason.SUPERSEDED, 'the given-up connection is closed with SUPERSEDED');
  await session.close();
});

test('a lost transport resumes by itself; unacknowledged messages are replayed', async () => {
  const { server, session, s } = await open({ echo: false });
  server.push(s(), 'feed', enc('x1'));
  assert.equal(dec(await session.feed.recv()), 'x1');
  server.conns[0].wt.kill(); // "Connection lost."
  server.push(s(), 'feed', enc('x2')); // kept by the server for its replay
  await until(() => session.state === 'connected' && server.conns.length === 2);
  assert.equal(dec(await session.feed.recv()), 'x2');
  await session.close();
});

test('a refused resume ends the session with the reason', async () => {
  const { server, session } = await open({ echo: false });
  const closed = new Promise((r) => session.addEventListener('closed', (e) => r(e.detail)));
  server.opts.forget = true;
  server.conns[0].wt.kill();
  const detail = await closed;
  assert.equal(detail.code, Reason.UNKNOWN_SESSION);
  assert.equal(detail.reason, 'UNKNOWN_SESSION');
  assert.equal(detail.message, 'unknown session');
  await assert.rejects(session.main.send(enc('late')), (e) => e.reason === 'CLOSED');
  await assert.rejects(session.main.recv(), (e) => e.code === Reason.UNKNOWN_SESSION);
});

test('an unreachable server: resume attempts within the budget, then HANDSHAKE_TIMEOUT', async () => {
  const { server, session } = await open({ echo: false }, { resumeBudgetMs: 300, resumeBackoffMs: 20, resumeBackoffMaxMs: 40 });
  server.opts.unreachable = true;
  const started = Date.now();
  server.conns[0].wt.kill();
  const detail = await session.closed;
  assert.equal(detail.code, Reason.HANDSHAKE_TIMEOUT);
  assert.ok(Date.now() - started < 1000);
  assert.ok(server.conns.length >= 4, `${server.conns.length - 1} attempts`);
});

test('a graceful close by the server (FIN on both streams) ends the session normally', async () => {
  const { server, session, s } = await open({ echo: false });
  server.push(s(), 'main', enc('last'));
  await until(() => s().out.main.length === 1);
  server.finish(s());
  const detail = await session.closed;
  assert.equal(detail.code, Reason.NORMAL);
  assert.equal(detail.local, false);
  assert.equal(dec(await session.main.recv()), 'last', 'what came before the FIN is delivered');
  const rest = [];
  for await (const m of session.main) rest.push(m);
  assert.equal(rest.length, 0);
  assert.equal(s().out.main.length, 0, 'and acknowledged');
});

test('a graceful close by the client: FINs, acknowledgement, then close code 0', async () => {
  const { server, session } = await open({ echo: false });
  await session.main.send(enc('bye'));
  const detail = await session.close();
  assert.equal(detail.code, Reason.NORMAL);
  assert.equal(server.received.at(-1)[1], 'bye');
  assert.deepEqual(server.conns[0].fins, { main: true, feed: true });
  assert.equal(server.closes.at(-1).closeCode, 0);
  await assert.rejects(session.feed.send(enc('x')), (e) => e.reason === 'CLOSED');
});

test('the lane: newest wins, onmessage, sends, oversize refused', async () => {
  const { server, session } = await open({ echo: false });
  const got = [];
  session.lane.onmessage = (payload, seq) => got.push([seq, dec(payload)]);
  const dg = server.conns[0].wt.dg;
  for (const seq of [0, 2, 1, 3]) dg.enqueue(encodeLaneDatagram(seq, 0, enc('s' + seq)));
  await until(() => got.length === 3);
  assert.deepEqual(got, [[0n, 's0'], [2n, 's2'], [3n, 's3']]);
  assert.equal(session.lane.send(enc('up')), true);
  await until(() => server.lane.some((d) => d.kind === 'lane'));
  const lane = server.lane.find((d) => d.kind === 'lane');
  assert.equal(lane.seq, 0n);
  assert.equal(dec(lane.payload), 'up');
  assert.throws(() => session.lane.send(new Uint8Array(1200)), (e) => e.reason === 'TOO_LARGE');
  assert.equal(session.lane.maxPayload, 1181);
  session.lane.onmessage = null;
  dg.enqueue(encodeLaneDatagram(9, 0, enc('queued')));
  const next = await session.lane.recv();
  assert.equal(next.seq, 9n);
  session.dropConnection();
  assert.equal(session.lane.send(enc('dropped')), false);
  await session.close();
});

test('sends wait while the stream holds a send buffer of unwritten bytes, and keep their order', async () => {
  const server = new FakeServer({ echo: false });
  const WT = fakeWebTransport(server);
  let gate = null;
  const origStream = server.stream.bind(server);
  server.stream = (conn) => {
    const st = origStream(conn);
    const inner = st.pipe.client.writable.getWriter();
    // A writable that holds its writes while `gate` is set.
    st.pipe.client = {
      readable: st.pipe.client.readable,
      writable: new WritableStream({ async write(chunk) { if (gate) await gate.promise; await inner.write(chunk); }, close: () => inner.close() }, new CountQueuingStrategy({ highWaterMark: 1000 })),
    };
    return st;
  };
  const session = await connect({ url: 'https://127.0.0.1:1/quicfeed', WebTransport: WT, sendBufferBytes: 1000 });
  let release;
  gate = { promise: new Promise((r) => (release = r)) };
  const done = [];
  const sends = [0, 1, 2, 3].map((i) => session.main.send(new Uint8Array(600).fill(i)).then(() => done.push(i)));
  await sleep(20);
  assert.deepEqual(done, [0, 1], 'the third send waits: 1200 bytes unwritten');
  gate = null;
  release();
  await Promise.all(sends);
  assert.deepEqual(done, [0, 1, 2, 3]);
  await until(() => server.received.length === 4);
  assert.deepEqual(server.received.map((r) => r[1].charCodeAt(0)), [0, 1, 2, 3]);
  await session.close();
});

test('a server violation after CONN_OK ends the session with the reason', async () => {
  const { server, session } = await open({ echo: false });
  server.conns[0].chan.main.pipe.enqueue(new Uint8Array([0, 0, 0, 1, 0x0b]));
  const detail = await session.closed;
  assert.equal(detail.code, Reason.UNKNOWN_MESSAGE);
  assert.equal(server.closes.at(-1).closeCode, Reason.UNKNOWN_MESSAGE);
});
