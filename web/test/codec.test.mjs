// Codec tests: every vector of PROTOCOL.md §10.3, §13.6 and the reason table of §9.5, read from
// the document itself at test time, plus the WebTransport resume-proof vector.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import {
  Reason, reasonName, QuicfeedError, decodeFrame, encodeFrame, decodeMessage, encodeMessage, FrameDecoder,
  encodeLaneDatagram, encodeAckDatagram, decodeDatagram, resumeProofMessage, webTransportResumeProof,
  fromHex, toHex, maxDataPayload, varintSize,
} from '../quicfeed.js';

const doc = readFileSync(new URL('../../PROTOCOL.md', import.meta.url), 'utf8');

/** The lines of a fenced block of PROTOCOL.md with the given info string. */
function block(info) {
  const m = doc.match(new RegExp('```' + info + '\\n([\\s\\S]*?)```'));
  assert.ok(m, `PROTOCOL.md has a \`\`\`${info} block`);
  return m[1].split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
}

const frameVectors = new Map(block('vectors').map((l) => {
  const [name, hex] = l.split(/:\s*/);
  return [name, fromHex(hex)];
}));

const tokenA = fromHex('a0a1a2a3a4a5a6a7a8a9aaabacadaeaf');
const tokenB = fromHex('b0b1b2b3b4b5b6b7b8b9babbbcbdbebf');
const cred1 = fromHex('c0c1c2c3c4c5c6c7c8c9cacbcccdcecf');
const cred2 = fromHex('d0d1d2d3d4d5d6d7d8d9dadbdcdddedf');
const hello = new TextEncoder().encode('hello');

// What each vector means, from the annotations of §10.1.
const expected = {
  conn_init_empty: { type: 'CONN_INIT', maxMainFrame: 65536, maxFeedFrame: 65536, credentials: new Uint8Array() },
  conn_init_credentials: { type: 'CONN_INIT', maxMainFrame: 1000, maxFeedFrame: 65536, credentials: new TextEncoder().encode('ticket-42') },
  conn_init_reply_small_id: { type: 'CONN_INIT_REPLY', playerId: 1n, tokenA },
  conn_init_reply_id_300: { type: 'CONN_INIT_REPLY', playerId: 300n, tokenA },
  conn_init_reply_id_2pow32: { type: 'CONN_INIT_REPLY', playerId: 1n << 32n, tokenA },
  feed_init: { type: 'FEED_INIT', playerId: 1n, tokenA },
  feed_init_id_300: { type: 'FEED_INIT', playerId: 300n, tokenA },
  feed_init_reply: { type: 'FEED_INIT_REPLY', tokenB },
  final_auth: { type: 'FINAL_AUTH', tokenB },
  conn_ok: { type: 'CONN_OK', maxMainFrame: 65536, maxFeedFrame: 65536, credential: cred1, mainNext: 0n, feedNext: 0n },
  conn_ok_mixed_limits: { type: 'CONN_OK', maxMainFrame: 256, maxFeedFrame: 16777216, credential: cred1, mainNext: 0n, feedNext: 0n },
  conn_ok_resumed: { type: 'CONN_OK', maxMainFrame: 65536, maxFeedFrame: 65536, credential: cred2, mainNext: 70000n, feedNext: 0n },
  conn_failed_server_full: { type: 'CONN_FAILED', reason: Reason.SERVER_FULL, message: 'server full', retryAfterMs: 2000 },
  conn_failed_empty_message: { type: 'CONN_FAILED', reason: Reason.INVALID_TOKEN, message: '', retryAfterMs: null },
  conn_failed_application: { type: 'CONN_FAILED', reason: 0x1234, message: 'banned', retryAfterMs: 3600000 },
  conn_failed_unknown_session: { type: 'CONN_FAILED', reason: Reason.UNKNOWN_SESSION, message: 'unknown session', retryAfterMs: null },
  data_empty: { type: 'DATA', seq: 0n, payload: new Uint8Array() },
  data_short: { type: 'DATA', seq: 0n, payload: hello },
  data_251_zero_bytes: { type: 'DATA', seq: 0n, payload: new Uint8Array(251) },
  data_typed_u64_str: { type: 'DATA', seq: 1n, payload: fromHex('fbe803026869') },
  data_seq_300: { type: 'DATA', seq: 300n, payload: hello },
  data_seq_2pow32: { type: 'DATA', seq: 1n << 32n, payload: new TextEncoder().encode('hi') },
  ack: { type: 'ACK', next: 32n },
  ack_300: { type: 'ACK', next: 300n },
  resume: { type: 'RESUME', playerId: 1n, proof: cred1, maxMainFrame: 65536, maxFeedFrame: 65536, mainNext: 300n, feedNext: 12n },
  gap: { type: 'GAP', next: 1000n },
};

test('§10.3: every frame vector decodes to its meaning and encodes back byte for byte', () => {
  const names = [...frameVectors.keys()].filter((n) => !n.startsWith('decl_'));
  assert.ok(names.length >= 26, `found ${names.length} frame vectors`);
  for (const name of names) {
    const bytes = frameVectors.get(name);
    const want = expected[name];
    assert.ok(want, `vector ${name} has an expected meaning in this test`);
    const msg = decodeFrame(bytes);
    assert.deepEqual(msg, want, `decode ${name}`);
    assert.equal(toHex(encodeFrame(want)), toHex(bytes), `encode ${name}`);
    assert.equal(toHex(encodeMessage(want)), toHex(bytes.subarray(4)), `encode body ${name}`);
  }
  for (const name of Object.keys(expected)) assert.ok(frameVectors.has(name), `PROTOCOL.md still has ${name}`);
});

test('§10.3: declaration bytes', () => {
  assert.equal(toHex(frameVectors.get('decl_main')), '00');
  assert.equal(toHex(frameVectors.get('decl_feed')), '01');
});

test('§9.5: the reason table matches the document', () => {
  const rows = block('reasons').map((l) => l.split(/\s+/));
  assert.equal(rows.length, Object.keys(Reason).length);
  for (const [code, name] of rows) {
    assert.equal(Reason[name], Number(code), name);
    assert.equal(reasonName(Number(code)), name);
  }
  assert.equal(reasonName(0x0017), 'RESERVED_0x0017');
  assert.equal(reasonName(0x1234), 'APPLICATION_0x1234');
  assert.equal(reasonName(null), 'TRANSPORT_ERROR');
});

test('§13.6: acknowledgement datagram vectors', () => {
  const rows = block('ack-datagram-vectors');
  assert.equal(rows.length, 3);
  for (const row of rows) {
    const [name, rest] = row.split(/:\s*/);
    const [main, feed, hex] = rest.split(/\s+/);
    assert.equal(toHex(encodeAckDatagram(BigInt(main), BigInt(feed))), hex, name);
    assert.deepEqual(decodeDatagram(fromHex(hex)), { kind: 'ack', mainNext: BigInt(main), feedNext: BigInt(feed) }, name);
  }
});

test('§13.6: lane datagram vectors', () => {
  const rows = block('lane-vectors');
  assert.equal(rows.length, 4);
  for (const row of rows) {
    const [name, rest] = row.split(/:\s*/);
    const [seq, sent, payloadHex, hex] = rest.split(/\s+/);
    const payload = payloadHex === '-' ? new Uint8Array() : fromHex(payloadHex);
    assert.equal(toHex(encodeLaneDatagram(BigInt(seq), BigInt(sent), payload)), hex, name);
    assert.deepEqual(decodeDatagram(fromHex(hex)), { kind: 'lane', seq: BigInt(seq), sentMs: BigInt(sent), payload }, name);
  }
});

test('WebTransport resume proof vector', async () => {
  const credential = fromHex('c0c1c2c3c4c5c6c7c8c9cacbcccdcecf');
  assert.equal(toHex(resumeProofMessage(300n)), '71756963666565642d726573756d652d7765627472616e73706f7274000000000000012c');
  assert.equal(toHex(await webTransportResumeProof(credential, 300n)), 'f83dcf3011531a6e4cd3f507575f9b5a');
  assert.equal(toHex(await webTransportResumeProof(credential, 300)), 'f83dcf3011531a6e4cd3f507575f9b5a');
});

test('§7.2: the exporter context layout (label and context of the resume-proof block)', () => {
  // Not used on WebTransport, but the block fixes how a player ID is laid out: u64 big-endian,
  // the same layout as the WebTransport HMAC message.
  const fields = Object.fromEntries(block('resume-proof').map((l) => l.split(/:\s*/)));
  const ctx = fromHex(fields.context);
  assert.equal(toHex(ctx.subarray(0, 16)), fields.credential);
  assert.equal(toHex(ctx.subarray(16)), toHex(resumeProofMessage(BigInt(fields.player_id)).subarray(28)));
});

function assertViolation(fn, code) {
  assert.throws(fn, (e) => e instanceof QuicfeedError && e.code === code, `expected ${reasonName(code)}`);
}

test('§5.1: decoders accept non-shortest varints within the field width', () => {
  assert.deepEqual(decodeMessage(fromHex('08fb0500')), { type: 'ACK', next: 5n });
  assert.deepEqual(decodeMessage(fromHex('0afd0100000000000000')), { type: 'GAP', next: 1n });
  // A u16 reason refuses fc; a u32 frame limit refuses fd; every field refuses fe and ff.
  assertViolation(() => decodeMessage(fromHex('06fc0c000000000000')), Reason.MALFORMED_MESSAGE);
  assertViolation(() => decodeMessage(fromHex('05fd0000010000000000fc00000100' + 'c0'.repeat(16) + '0000')), Reason.MALFORMED_MESSAGE);
  assertViolation(() => decodeMessage(fromHex('08fe' + '00'.repeat(16))), Reason.MALFORMED_MESSAGE);
  assertViolation(() => decodeMessage(fromHex('08ff')), Reason.MALFORMED_MESSAGE);
  assertViolation(() => decodeMessage(fromHex('08fb05')), Reason.MALFORMED_MESSAGE); // truncated
  assert.equal(varintSize(250), 1);
  assert.equal(varintSize(251), 3);
  assert.equal(varintSize(65536), 5);
  assert.equal(varintSize(1n << 32n), 9);
});

test('§5.2: tags', () => {
  assertViolation(() => decodeMessage(fromHex('0b')), Reason.UNKNOWN_MESSAGE);
  assertViolation(() => decodeMessage(fromHex('fa')), Reason.UNKNOWN_MESSAGE);
  assertViolation(() => decodeMessage(fromHex('fb0b00')), Reason.UNKNOWN_MESSAGE);
  assertViolation(() => decodeMessage(fromHex('fd0700000000000000')), Reason.MALFORMED_MESSAGE);
  assertViolation(() => decodeMessage(fromHex('fb07')), Reason.MALFORMED_MESSAGE);
  assert.deepEqual(decodeMessage(fromHex('fb0800fb2c01')), { type: 'ACK', next: 300n });
  assertViolation(() => decodeMessage(new Uint8Array()), Reason.MALFORMED_MESSAGE);
});

test('§5.3, §5.4: whole-body rules', () => {
  assertViolation(() => decodeMessage(fromHex('08')), Reason.MALFORMED_MESSAGE); // field missing
  assertViolation(() => decodeMessage(fromHex('082000')), Reason.MALFORMED_MESSAGE); // trailing byte
  assertViolation(() => decodeMessage(fromHex('07000568656c6c')), Reason.MALFORMED_MESSAGE); // length 5, 4 bytes
  assertViolation(() => decodeMessage(fromHex('07000468656c6c6f')), Reason.MALFORMED_MESSAGE); // length 4, 5 bytes
  assertViolation(() => decodeMessage(fromHex('060c01ff00')), Reason.MALFORMED_MESSAGE); // invalid UTF-8
  assertViolation(() => decodeMessage(fromHex('060c0002')), Reason.MALFORMED_MESSAGE); // Option byte 02
  assertViolation(() => decodeMessage(fromHex('060cfd' + 'ff'.repeat(8) + '00')), Reason.MALFORMED_MESSAGE); // huge length, no allocation
  assertViolation(() => decodeMessage(fromHex('03b0b1')), Reason.MALFORMED_MESSAGE); // short token
});

test('§4.3: the frame length is checked from the prefix alone, before the body', () => {
  const d = new FrameDecoder();
  d.push(fromHex('00001001')); // 4097
  assertViolation(() => d.next(4096), Reason.FRAME_TOO_LARGE);
  const z = new FrameDecoder();
  z.push(fromHex('00000000'));
  assertViolation(() => z.next(4096), Reason.MALFORMED_MESSAGE);
  const big = new FrameDecoder();
  big.push(fromHex('ffffffff'));
  assertViolation(() => big.next(16777216), Reason.FRAME_TOO_LARGE);
});

test('§4.1: frames are reassembled across chunks, byte by byte', () => {
  const stream = new Uint8Array([...frameVectors.get('conn_init_reply_small_id'), ...frameVectors.get('data_251_zero_bytes'), ...frameVectors.get('ack')]);
  const d = new FrameDecoder();
  const got = [];
  for (const b of stream) {
    d.push(new Uint8Array([b]));
    for (let body; (body = d.next(65536)); ) got.push(decodeMessage(body).type);
  }
  assert.deepEqual(got, ['CONN_INIT_REPLY', 'DATA', 'ACK']);
  assert.equal(d.buffered, 0);
});

test('§13.5: datagram errors', () => {
  assertViolation(() => decodeDatagram(new Uint8Array()), Reason.MALFORMED_MESSAGE);
  assertViolation(() => decodeDatagram(fromHex('03')), Reason.UNKNOWN_MESSAGE);
  assertViolation(() => decodeDatagram(fromHex('00')), Reason.UNKNOWN_MESSAGE);
  assertViolation(() => decodeDatagram(fromHex('01fb2c')), Reason.MALFORMED_MESSAGE);
  assertViolation(() => decodeDatagram(fromHex('0100')), Reason.MALFORMED_MESSAGE);
  assertViolation(() => decodeDatagram(fromHex('02000000')), Reason.MALFORMED_MESSAGE); // trailing
  assertViolation(() => decodeDatagram(fromHex('0200')), Reason.MALFORMED_MESSAGE);
  assert.deepEqual(decodeDatagram(fromHex('010000')), { kind: 'lane', seq: 0n, sentMs: 0n, payload: new Uint8Array() });
});

test('§5.5.8: largest DATA payload for a frame limit', () => {
  assert.equal(maxDataPayload(65536), 65523);
  assert.equal(maxDataPayload(256), 245);
  for (const limit of [256, 260, 1000, 65536, 65548, 16777216]) {
    const p = maxDataPayload(limit);
    assert.ok(1 + 9 + varintSize(p) + p <= limit);
    assert.ok(1 + 9 + varintSize(p + 1) + p + 1 > limit);
  }
});

test('encoders refuse values outside their field', () => {
  assert.throws(() => encodeFrame({ type: 'CONN_INIT', maxMainFrame: 2 ** 32, maxFeedFrame: 256, credentials: new Uint8Array() }), RangeError);
  assert.throws(() => encodeFrame({ type: 'CONN_FAILED', reason: 0x10000, message: '', retryAfterMs: null }), RangeError);
  assert.throws(() => encodeFrame({ type: 'FINAL_AUTH', tokenB: new Uint8Array(15) }), TypeError);
  assert.throws(() => encodeFrame({ type: 'ACK', next: -1n }), RangeError);
});
