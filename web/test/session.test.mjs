// The protocol state machine, driven without a browser: a scripted server feeds it frames and
// reads what it writes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import {
  SessionCore, Reason, encodeFrame, decodeMessage, FrameDecoder, fromHex, toHex, encodeAckDatagram,
  encodeLaneDatagram, LaneReceiver, ResumePolicy, SendChannel,
} from '../quicfeed.js';

const doc = readFileSync(new URL('../../PROTOCOL.md', import.meta.url), 'utf8');
const vectors = new Map(doc.match(/```vectors\n([\s\S]*?)```/)[1].split('\n')
  .map((l) => l.trim()).filter((l) => l && !l.startsWith('#')).map((l) => l.split(/:\s*/)));
const vec = (name) => vectors.get(name);

const tokenA = fromHex('a0a1a2a3a4a5a6a7a8a9aaabacadaeaf');
const tokenB = fromHex('b0b1b2b3b4b5b6b7b8b9babbbcbdbebf');
const cred1 = fromHex('c0c1c2c3c4c5c6c7c8c9cacbcccdcecf');
const cred2 = fromHex('d0d1d2d3d4d5d6d7d8d9dadbdcdddedf');
const bytes = (s) => new TextEncoder().encode(s);

/** A state machine and the server's view of what it wrote. */
function harness(options = {}) {
  const core = new SessionCore(options);
  const h = {
    core,
    now: 0,
    wire: { main: [], feed: [] },
    datagrams: [],
    outcomes: [],
    lane: [],
    drain() {
      for (const a of core.takeActions()) {
        if (a.op === 'write') h.wire[a.channel].push(a.bytes);
        else if (a.op === 'datagram') h.datagrams.push(a.bytes);
        else if (a.op === 'lane') h.lane.push(a);
        else h.outcomes.push(a);
      }
      return h;
    },
    /** Hex of everything written on a channel since the last call. */
    written(channel) {
      const hex = h.wire[channel].map(toHex).join('');
      h.wire[channel] = [];
      return hex;
    },
    /** Messages written on a channel since the last call (declaration bytes dropped). */
    frames(channel) {
      const d = new FrameDecoder();
      for (const b of h.wire[channel]) d.push(b.length === 1 && (b[0] === 0 || b[0] === 1) ? new Uint8Array() : b);
      h.wire[channel] = [];
      const out = [];
      for (let body; (body = d.next(1 << 24)); ) out.push(decodeMessage(body));
      return out;
    },
    server(channel, ...msgs) {
      for (const m of msgs) core.onStreamData(channel, typeof m === 'string' ? fromHex(m) : encodeFrame(m), h.now);
      return h.drain();
    },
    advance(ms) {
      h.now += ms;
      core.onTimer(h.now);
      return h.drain();
    },
    outcome(op) {
      return h.outcomes.find((o) => o.op === op);
    },
  };
  return h;
}

const connOk = (extra = {}) => ({ type: 'CONN_OK', maxMainFrame: 65536, maxFeedFrame: 65536, credential: cred1, mainNext: 0n, feedNext: 0n, ...extra });

/** A harness whose first handshake has completed, as player 1. */
function established(options) {
  const h = harness(options);
  h.core.startFirst(0, 10000, { datagrams: true });
  h.drain();
  h.server('main', vec('conn_init_reply_small_id'));
  h.server('feed', vec('feed_init_reply'));
  h.server('main', vec('conn_ok'));
  assert.equal(h.core.state, 'established');
  h.written('main');
  h.written('feed');
  h.outcomes = [];
  return h;
}

test('§10.2: a first handshake, byte for byte', () => {
  const h = harness();
  h.core.startFirst(0, 10000);
  h.drain();
  assert.equal(h.written('main'), '00' + vec('conn_init_empty'));
  assert.equal(h.core.readable('feed'), false);
  h.server('main', vec('conn_init_reply_small_id'));
  assert.equal(h.written('feed'), '01' + vec('feed_init'));
  h.now = 40;
  h.server('feed', vec('feed_init_reply'));
  assert.equal(h.written('main'), vec('final_auth'));
  assert.equal(h.core.readable('feed'), false, 'feed is not read between FEED_INIT_REPLY and CONN_OK (§6.5)');
  h.now = 80;
  h.server('main', vec('conn_ok'));
  assert.deepEqual(h.outcomes, [{ op: 'established', resumed: false }]);
  assert.equal(h.core.playerId, 1n);
  assert.equal(toHex(h.core.credential), toHex(cred1));
  assert.equal(h.core.rttMs, 40);
  assert.equal(h.written('main'), '', 'nothing else after a first handshake');
});

test('§6.4: credentials, strings UTF-8 encoded', () => {
  const h = harness({ credentials: 'ticket-42', maxMainFrame: 1000 });
  h.core.startFirst(0, 10000);
  h.drain();
  assert.equal(h.written('main'), '00' + vec('conn_init_credentials'));
  assert.throws(() => new SessionCore({ credentials: new Uint8Array(4083) }), RangeError);
});

test('§6.5, §8: FEED_INIT retries, then HANDSHAKE_TIMEOUT', () => {
  const h = harness();
  h.core.startFirst(0, 10000);
  h.drain().server('main', vec('conn_init_reply_id_300'));
  assert.equal(h.written('feed'), '01' + vec('feed_init_id_300'));
  h.advance(999);
  assert.equal(h.written('feed'), '');
  h.advance(1);
  assert.equal(h.written('feed'), vec('feed_init_id_300'), 'the identical FEED_INIT, no second declaration');
  h.advance(1000);
  assert.equal(h.written('feed'), vec('feed_init_id_300'));
  h.advance(1000);
  assert.equal(h.written('feed'), '', 'three attempts in all');
  assert.equal(h.outcome('close').code, Reason.HANDSHAKE_TIMEOUT);
  assert.equal(h.outcome('failed').error.code, Reason.HANDSHAKE_TIMEOUT);
});

test('§6.5: late FEED_INIT_REPLY copies are ignored, at most attempts - 1 of them', () => {
  const h = harness();
  h.core.startFirst(0, 10000, { datagrams: false });
  h.drain().server('main', vec('conn_init_reply_small_id'));
  h.advance(1000).advance(1000); // three FEED_INITs sent
  h.server('feed', vec('feed_init_reply'), vec('feed_init_reply')); // the second waits unread
  h.server('main', vec('conn_ok'));
  assert.equal(h.core.state, 'established');
  h.server('feed', vec('feed_init_reply'));
  assert.equal(h.core.state, 'established', 'two copies tolerated');
  h.server('feed', vec('feed_init_reply'));
  assert.equal(h.outcome('close').code, Reason.UNEXPECTED_MESSAGE);
  assert.equal(h.outcome('ended').error.code, Reason.UNEXPECTED_MESSAGE);
});

test('§9.1: CONN_FAILED is surfaced with its reason, message and hint', () => {
  const h = harness();
  h.core.startFirst(0, 10000);
  h.drain().server('main', vec('conn_failed_server_full'));
  const { error } = h.outcome('failed');
  assert.equal(error.code, Reason.SERVER_FULL);
  assert.equal(error.reason, 'SERVER_FULL');
  assert.equal(error.detail, 'server full');
  assert.equal(error.retryAfterMs, 2000);
  assert.equal(error.local, false);
  assert.deepEqual(h.outcome('close'), { op: 'close', code: Reason.SERVER_FULL, message: 'server full' });
  // The FIN that follows CONN_FAILED changes nothing (§3.3).
  h.core.onStreamEnd('main', 1);
  assert.equal(h.drain().outcomes.length, 2);
});

test('§6.4: violations during the first handshake', () => {
  const cases = [
    ['DATA before CONN_OK', (h) => h.server('main', vec('data_short')), Reason.UNEXPECTED_MESSAGE],
    ['unknown tag', (h) => h.server('main', '000000010b'), Reason.UNKNOWN_MESSAGE],
    ['frame above 4096', (h) => h.server('main', '00001001'), Reason.FRAME_TOO_LARGE],
    ['empty frame', (h) => h.server('main', '00000000'), Reason.MALFORMED_MESSAGE],
    ['FIN on main', (h) => { h.core.onStreamEnd('main', 0); h.drain(); }, Reason.INVALID_STREAM],
    ['reset', (h) => { h.core.onStreamReset('main', 0); h.drain(); }, Reason.INVALID_STREAM],
    ['deadline', (h) => h.advance(10000), Reason.HANDSHAKE_TIMEOUT],
  ];
  for (const [name, act, code] of cases) {
    const h = harness();
    h.core.startFirst(0, 10000);
    h.drain();
    act(h);
    assert.equal(h.outcome('failed')?.error.code, code, name);
    assert.equal(h.outcome('close')?.code, code, name);
    assert.equal(h.core.state, 'closed');
  }
  const h = harness();
  h.core.startFirst(0, 10000);
  h.drain();
  h.core.connectionLost(5);
  assert.equal(h.drain().outcome('failed').error.reason, 'TRANSPORT_ERROR');
});

test('§5.5.6, §4.2: CONN_OK checks', () => {
  for (const [msg, code] of [
    [connOk({ maxMainFrame: 255 }), Reason.MALFORMED_MESSAGE],
    [connOk({ feedNext: 1n }), Reason.SEQUENCE_ERROR],
  ]) {
    const h = harness();
    h.core.startFirst(0, 10000);
    h.drain().server('main', vec('conn_init_reply_small_id')).server('feed', vec('feed_init_reply')).server('main', msg);
    assert.equal(h.outcome('failed').error.code, code);
  }
});

test('§6.5, §4.3: feed frames behind FEED_INIT_REPLY wait for CONN_OK and its larger limit', () => {
  const h = harness();
  h.core.startFirst(0, 10000);
  h.drain().server('main', vec('conn_init_reply_small_id'));
  const big = encodeFrame({ type: 'DATA', seq: 0n, payload: new Uint8Array(5000) });
  h.core.onStreamData('feed', new Uint8Array([...fromHex(vec('feed_init_reply')), ...big]), 0);
  h.drain();
  assert.equal(h.core.queues.feed.length, 0);
  h.server('main', vec('conn_ok'));
  assert.equal(h.core.state, 'established');
  assert.equal(h.core.popReceived('feed', 0).payload.length, 5000);
});

test('§11.1: DATA is numbered from 0 per channel; the replay buffer keeps it', () => {
  const h = established();
  for (let i = 0; i < 3; i++) h.core.send('main', bytes('hello'), 0);
  h.core.send('feed', bytes('hi'), 0);
  h.drain();
  assert.equal(h.written('main'), vec('data_short') + '0000000807010568656c6c6f' + '0000000807020568656c6c6f');
  assert.deepEqual(h.frames('feed'), [{ type: 'DATA', seq: 0n, payload: bytes('hi') }]);
  assert.equal(h.core.out.main.kept.length, 3);
  assert.throws(() => h.core.send('main', new Uint8Array(65524), 0), (e) => e.reason === 'TOO_LARGE');
  h.core.send('main', new Uint8Array(65523), 0);
});

test('§11.2: duplicates dropped, DATA ahead is SEQUENCE_ERROR', () => {
  const h = established();
  h.server('main', { type: 'DATA', seq: 0n, payload: bytes('a') }, { type: 'DATA', seq: 1n, payload: bytes('b') });
  h.server('main', { type: 'DATA', seq: 0n, payload: bytes('a') }, { type: 'DATA', seq: 1n, payload: bytes('b') });
  assert.equal(h.core.queues.main.length, 2);
  assert.equal(h.core.stats.main.duplicates, 2);
  assert.equal(h.core.in.main.next, 2n);
  h.server('main', { type: 'DATA', seq: 3n, payload: bytes('d') });
  assert.equal(h.outcome('close').code, Reason.SEQUENCE_ERROR);
  assert.equal(h.outcome('ended').error.code, Reason.SEQUENCE_ERROR);
  // Delivered messages are still handed out after the end (§11.6).
  assert.deepEqual(h.core.popReceived('main', 0).payload, bytes('a'));

  const h2 = established();
  h2.server('feed', { type: 'DATA', seq: (1n << 64n) - 1n, payload: bytes('x') });
  assert.equal(h2.outcome('ended').error.code, Reason.SEQUENCE_ERROR);
});

test('§11.3, §11.4: ACKs trim the replay buffer; above what was sent is SEQUENCE_ERROR', () => {
  const h = established();
  for (let i = 0; i < 5; i++) h.core.send('main', bytes('m' + i), 0);
  h.drain();
  h.server('main', { type: 'ACK', next: 3n });
  assert.deepEqual(h.core.out.main.kept.toArray().map((m) => m.seq), [3n, 4n]);
  h.server('main', { type: 'ACK', next: 2n }); // lower: harmless
  assert.equal(h.core.out.main.kept.length, 2);
  h.core.onDatagram(encodeAckDatagram(5, 0), 0); // by datagram
  h.drain();
  assert.equal(h.core.out.main.kept.length, 0);
  assert.equal(h.core.state, 'established');
  h.server('feed', { type: 'ACK', next: 1n });
  assert.equal(h.outcome('ended').error.code, Reason.SEQUENCE_ERROR);

  const h2 = established();
  h2.core.onDatagram(encodeAckDatagram(0, 7), 0);
  assert.equal(h2.drain().outcome('ended').error.code, Reason.SEQUENCE_ERROR);
});

test('§11.3: acknowledgements after 32 messages, or the delay, in-band and by datagram', () => {
  const h = established();
  h.datagrams = [];
  for (let i = 0; i < 31; i++) h.server('main', { type: 'DATA', seq: BigInt(i), payload: bytes('x') });
  assert.equal(h.written('main'), '');
  h.server('main', { type: 'DATA', seq: 31n, payload: bytes('x') });
  assert.equal(h.written('main'), vec('ack'));
  assert.equal(toHex(h.datagrams.pop()), toHex(encodeAckDatagram(32, 0)));
  h.server('feed', { type: 'DATA', seq: 0n, payload: bytes('y') });
  h.advance(112);
  assert.equal(h.written('feed'), '');
  h.advance(1);
  assert.deepEqual(h.frames('feed'), [{ type: 'ACK', next: 1n }]);
  assert.equal(toHex(h.datagrams.pop()), toHex(encodeAckDatagram(32, 1)));
  assert.equal(h.core.nextTimer(), null);
});

test('§11.5: GAP moves next and reports the missed messages once', () => {
  const h = established();
  for (let i = 0; i < 12; i++) h.server('feed', { type: 'DATA', seq: BigInt(i), payload: bytes('f') });
  h.server('feed', vec('gap'), { type: 'DATA', seq: 1000n, payload: bytes('z') });
  h.server('feed', { type: 'GAP', next: 500n }); // not ahead: nothing
  const items = [];
  for (let it; (it = h.core.popReceived('feed', 0)); ) items.push(it);
  assert.equal(items.length, 14);
  assert.deepEqual(items[12], { missed: 988n });
  assert.deepEqual(items[13].payload, bytes('z'));
  assert.equal(h.core.in.feed.next, 1001n);
  h.advance(200);
  assert.deepEqual(h.frames('feed'), [{ type: 'ACK', next: 1001n }]);
});

test('§10.2, §6.6, §11.5: a resume, byte for byte, with replays both ways', async () => {
  const h = established({ replayBufferBytes: 1 << 20 });
  for (let i = 0; i < 300; i++) h.server('main', { type: 'DATA', seq: BigInt(i), payload: bytes('s') });
  for (let i = 0; i < 12; i++) h.server('feed', { type: 'DATA', seq: BigInt(i), payload: bytes('f') });
  for (let i = 0; i < 70005; i++) h.core.send('main', new Uint8Array([i & 0xff]), 0);
  h.drain();
  h.server('main', { type: 'ACK', next: 69990n });
  h.written('main');
  h.written('feed');
  // The connection is lost: the session survives; sends are kept, not written.
  h.core.connectionLost(1000);
  assert.equal(h.drain().outcome('lost').op, 'lost');
  assert.equal(h.core.state, 'resuming');
  h.core.send('feed', bytes('q0'), 1000);
  h.core.send('feed', bytes('q1'), 1000);
  h.core.onDatagram(encodeAckDatagram(1, 1), 1000); // no connection: ignored
  assert.equal(h.drain().written('feed'), '');
  // The resume flight: `resume` presents the credential itself as its proof field.
  h.core.startResume(cred1, 1100, 3100, { datagrams: true });
  h.drain();
  assert.equal(h.written('main'), '00' + vec('resume'));
  assert.equal(h.written('feed'), '01');
  assert.equal(h.core.readable('feed'), false, 'feed is not read before CONN_OK');
  // The server's replay on feed can arrive before CONN_OK; it waits.
  h.server('feed', vec('gap'), { type: 'DATA', seq: 1000n, payload: bytes('late') });
  h.now = 1150;
  h.server('main', vec('conn_ok_resumed'), vec('data_seq_300'));
  assert.deepEqual(h.outcome('established'), { op: 'established', resumed: true });
  assert.equal(toHex(h.core.credential), toHex(cred2));
  const main = h.frames('main');
  assert.deepEqual(main.slice(0, 5).map((m) => m.seq), [70000n, 70001n, 70002n, 70003n, 70004n], 'kept DATA from 70000 on');
  assert.deepEqual(main[5], { type: 'ACK', next: 300n }, 'then something on main at once, confirming the credential');
  assert.equal(main.length, 6);
  assert.deepEqual(h.frames('feed'), [{ type: 'DATA', seq: 0n, payload: bytes('q0') }, { type: 'DATA', seq: 1n, payload: bytes('q1') }]);
  assert.equal(h.core.in.main.next, 301n);
  assert.equal(h.core.in.feed.next, 1001n);
  assert.equal(h.core.stats.resumes, 1);
  assert.equal(h.core.stats.replayed, 7);
  // New messages continue the numbering.
  h.core.send('main', bytes('new'), 1200);
  assert.deepEqual(h.drain().frames('main'), [{ type: 'DATA', seq: 70005n, payload: bytes('new') }]);
});

test('§11.4, §11.5: a replay buffer that overflowed starts the replay with a GAP', () => {
  const h = established({ replayBufferBytes: 10 });
  h.core.reconnect();
  assert.equal(h.drain().outcome('close').code, Reason.SUPERSEDED);
  for (let i = 0; i < 5; i++) h.core.send('main', bytes('abcd'), 0);
  assert.equal(h.core.out.main.overflowed, 3);
  h.core.startResume(new Uint8Array(16), 0, 2000);
  h.drain();
  h.written('main');
  h.server('main', connOk({ credential: cred2 }));
  assert.deepEqual(h.frames('main').map((m) => [m.type, m.seq ?? m.next]), [['GAP', 3n], ['DATA', 3n], ['DATA', 4n], ['ACK', 0n]]);
});

test('§6.6.4, §12.3: resume outcomes', () => {
  const lose = () => {
    const h = established();
    h.core.connectionLost(0);
    h.drain();
    h.outcomes = [];
    h.core.startResume(new Uint8Array(16), 0, 2000);
    return h.drain();
  };
  let h = lose();
  h.server('main', vec('conn_failed_unknown_session'));
  assert.equal(h.outcome('ended').error.reason, 'UNKNOWN_SESSION', 'a refused RESUME ends the session');
  h = lose();
  h.advance(2000);
  assert.equal(h.outcome('close').code, Reason.HANDSHAKE_TIMEOUT);
  assert.ok(h.outcome('retry'), 'the attempt deadline: try again');
  assert.equal(h.core.state, 'resuming');
  h = lose();
  h.core.connectionLost(5);
  assert.ok(h.drain().outcome('retry'), 'connection lost during the attempt: try again');
  h = lose();
  h.core.connectionLost(5, { closeCode: Reason.SERVER_BUSY });
  assert.ok(h.drain().outcome('retry'));
  h = lose();
  h.core.connectionLost(5, { closeCode: Reason.TOKEN_REUSED, reason: 'token already used' });
  assert.equal(h.drain().outcome('ended').error.code, Reason.TOKEN_REUSED);
  h = lose();
  h.server('main', connOk({ mainNext: 1n }));
  assert.equal(h.outcome('ended').error.code, Reason.SEQUENCE_ERROR, 'main_next above what was sent');
  h = lose();
  h.server('feed', vec('data_short')); // not read before CONN_OK
  assert.equal(h.outcomes.length, 0);
  h.server('main', vec('data_short'));
  assert.equal(h.outcome('ended').error.code, Reason.UNEXPECTED_MESSAGE);
  h = lose();
  h.core.giveUp();
  assert.equal(h.drain().outcome('ended').error.code, Reason.HANDSHAKE_TIMEOUT);
});

test('§9.4: endings of an established connection', () => {
  let h = established();
  h.core.connectionLost(0);
  assert.ok(h.drain().outcome('lost'), 'plain loss: resume');
  h = established();
  h.core.connectionLost(0, { closeCode: Reason.DEAD_PATH });
  assert.ok(h.drain().outcome('lost'));
  h = established();
  h.core.connectionLost(0, { closeCode: Reason.SERVER_SHUTDOWN, reason: 'bye' });
  const e = h.drain().outcome('ended').error;
  assert.equal(e.code, Reason.SERVER_SHUTDOWN);
  assert.equal(e.detail, 'bye');
  h = established();
  h.core.onStreamReset('feed', 0);
  assert.equal(h.drain().outcome('close').code, Reason.SUPERSEDED, '§3.3: a reset stream when established');
  assert.ok(h.outcome('lost'));
  h = established({ livenessTimeoutMs: 1500 });
  h.advance(1499);
  assert.equal(h.outcomes.length, 0);
  h.advance(1);
  assert.equal(h.outcome('close').code, Reason.DEAD_PATH);
  assert.ok(h.outcome('lost'));
});

test('§3.3, §9.3: a graceful close by the server', () => {
  let h = established();
  h.core.send('main', bytes('mine'), 0);
  h.drain().written('main');
  h.server('feed', { type: 'DATA', seq: 0n, payload: bytes('last') });
  h.core.onStreamEnd('feed', 10);
  h.drain();
  assert.deepEqual(h.frames('feed'), [{ type: 'ACK', next: 1n }], 'acknowledged at once');
  h.core.onStreamEnd('main', 10);
  h.drain();
  h.server('main', { type: 'ACK', next: 1n });
  h.drain();
  assert.equal(h.outcomes.length, 0, "waits for the server's close, which says its reason");
  h.core.connectionLost(20, { closeCode: 0x1001, reason: 'round over' });
  const ended = h.drain().outcome('ended').error;
  assert.equal(ended.code, 0x1001, "the farewell's reason");
  assert.equal(ended.detail, 'round over');
  assert.deepEqual(h.core.popReceived('feed', 0).payload, bytes('last'));

  h = established();
  h.core.onStreamEnd('main', 0);
  h.drain();
  h.core.connectionLost(5, { closeCode: Reason.DEAD_PATH, reason: 'nothing received' });
  assert.equal(h.drain().outcome('ended').error.code, Reason.NORMAL, 'a close that keeps the session, after a FIN, is the graceful end');

  h = established();
  h.core.onStreamEnd('main', 0);
  h.drain().advance(2999);
  assert.equal(h.outcomes.length, 0);
  h.advance(1);
  assert.equal(h.outcome('ended').error.code, Reason.NORMAL, 'finish grace');

  h = established();
  h.core.onStreamEnd('main', 0);
  h.drain();
  h.core.connectionLost(5);
  assert.equal(h.drain().outcome('ended').error.code, Reason.NORMAL, 'the close after a FIN is the end');

  h = established();
  h.core.onStreamData('main', fromHex('0000000807'), 0);
  h.core.onStreamEnd('main', 0);
  assert.equal(h.drain().outcome('ended').error.code, Reason.MALFORMED_MESSAGE, 'a stream that ends inside a frame');
});

test('§9.3: a graceful close by the client', () => {
  const h = established();
  h.core.send('main', bytes('bye'), 0);
  h.drain().written('main');
  h.core.beginClose(Reason.NORMAL, '', 0);
  h.drain();
  assert.deepEqual(h.outcomes.map((o) => o.op), ['finish', 'finish']);
  assert.throws(() => h.core.send('main', bytes('more'), 0), (e) => e.reason === 'CLOSED');
  h.core.onFinWritten('main');
  h.core.onFinWritten('feed');
  h.server('main', { type: 'DATA', seq: 0n, payload: bytes('still read') });
  assert.equal(h.outcome('close'), undefined);
  h.server('main', { type: 'ACK', next: 1n });
  assert.deepEqual(h.outcome('close'), { op: 'close', code: 0, message: '' });
  assert.equal(h.outcome('ended').error.code, Reason.NORMAL);

  const l = established();
  l.core.send('main', bytes('never acked'), 0);
  l.core.beginClose(0x1001, 'game over', 0);
  l.drain().advance(2000);
  assert.deepEqual(l.outcome('close'), { op: 'close', code: 0x1001, message: 'game over' }, 'the close linger');

  const r = established();
  r.core.reconnect();
  r.drain();
  r.core.beginClose(0, '', 0);
  assert.deepEqual(r.drain().outcomes.map((o) => o.op), ['close', 'lost', 'ended'], 'no connection: ends locally');
});

test('frame limits once established (§4.3)', () => {
  const h = established({ maxMainFrame: 5000 });
  h.server('main', { type: 'DATA', seq: 0n, payload: new Uint8Array(4990) });
  assert.equal(h.core.queues.main.length, 1);
  h.server('main', '00001389');
  assert.equal(h.outcome('ended').error.code, Reason.FRAME_TOO_LARGE);
});

test('§13.4: the lane, newest wins', () => {
  const h = established();
  for (const seq of [0, 2, 1, 2, 3]) h.core.onDatagram(encodeLaneDatagram(seq, seq * 10, new Uint8Array([seq])), 100 + seq);
  h.drain();
  assert.deepEqual(h.lane.map((l) => l.seq), [0n, 2n, 3n]);
  assert.equal(h.core.stats.lane.stale, 2);
  h.core.onDatagram(fromHex('03'), 200);
  assert.equal(h.drain().outcome('ended').error.code, Reason.UNKNOWN_MESSAGE, '§13.5');
});

test('§13.4: lane maximum age, on the extra transit', () => {
  const r = new LaneReceiver(50);
  assert.equal(r.accept(0n, 1000n, 20), 'deliver'); // transit -980: the base
  assert.equal(r.accept(1n, 1010n, 60), 'deliver'); // 30 ms slower
  assert.equal(r.accept(2n, 1020n, 101), 'old'); // 61 ms slower
  assert.equal(r.accept(2n, 1020n, 70), 'stale');
  assert.equal(r.accept(3n, 1030n, 50), 'deliver');
});

test('§13.1, §13.3: lane sends', () => {
  const h = established();
  h.datagrams = [];
  h.now = 1234;
  assert.equal(h.core.laneSend(fromHex('aabb'), 1234.7, 1200), 0n);
  assert.equal(toHex(h.drain().datagrams.pop()), '0100fbd204aabb');
  assert.throws(() => h.core.laneSend(new Uint8Array(1200), 1300, 1200), (e) => e.reason === 'TOO_LARGE');
  assert.equal(h.core.laneSend(new Uint8Array(1), 1300, 1200), 1n);
  h.core.reconnect();
  h.drain();
  assert.equal(h.core.laneSend(new Uint8Array(1), 1400, 1200), null, 'dropped without a connection');
  assert.equal(h.core.stats.lane.dropped, 1);
});

test('§12.3: the resume policy', () => {
  const p = new ResumePolicy({ budgetMs: 5000, attemptTimeoutMs: 2000, backoffMs: 250, backoffMaxMs: 2000, random: () => 0.5 }, 0);
  assert.equal(p.attemptDeadline(0), 2000);
  assert.deepEqual([p.nextDelay(0), p.nextDelay(0), p.nextDelay(0), p.nextDelay(0), p.nextDelay(0)], [250, 500, 1000, 2000, 2000]);
  assert.equal(p.nextDelay(3001), null, 'would reach the end of the budget');
  assert.equal(p.attemptDeadline(4500), 5000, 'never past the budget');
  const j = new ResumePolicy({ random: () => 0.999 }, 0);
  assert.ok(j.nextDelay(0) < 375);
});

test('§11.4: SendChannel keeps the newest message even alone over capacity', () => {
  const s = new SendChannel(4);
  s.push(new Uint8Array(3));
  s.push(new Uint8Array(10));
  assert.deepEqual(s.kept.toArray().map((m) => m.seq), [1n]);
  assert.deepEqual(s.replay(0n).gap, 1n);
});
