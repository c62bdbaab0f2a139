/**
 * @file quicfeed.js: the browser client of quicfeed, over WebTransport.
 *
 * A dependency-free ES module (ES2022). It speaks the protocol `quicfeed/1` of PROTOCOL.md: the
 * declaration byte and frames on two bidirectional streams (§3, §4), the token handshake (§6),
 * resumption after a lost connection (§6.6, §12.3), reliable delivery across connections (§11)
 * and the feed datagram lane (§13). What differs on WebTransport:
 *
 * - main and feed are WebTransport bidirectional streams, opened in that order on each connection;
 * - a lane message or acknowledgement datagram is one WebTransport datagram carrying exactly the
 *   §13.2 / §11.3 payload;
 * - the `RESUME` proof is HMAC-SHA256(credential, "quicfeed-resume-webtransport" || player ID as
 *   u64 big-endian), cut to 16 bytes (a browser cannot use the TLS exporter of §7.2);
 * - a browser sees no QUIC close code: a refusal arrives as `CONN_FAILED` on main, a graceful
 *   close as FIN on the streams (§9.3), and any other close of the server's as its farewell, a
 *   `CONN_FAILED` on a unidirectional stream sent just before the close (§14.6); anything else
 *   that ends an established connection is a loss, and the session resumes.
 *
 * Layout: a pure codec (varints, messages, frames, datagrams); a pure, clock-driven protocol
 * state machine, {@link SessionCore}, which is fed bytes and timer ticks and answers with actions
 * (bytes to write, connections to close, outcomes), and which the Node tests drive without a
 * browser; and a thin WebTransport driver on top, {@link connect}, which returns a
 * {@link Session}.
 *
 * Typed messages are JSON (`sendJson`, `recvJson`): a web page needs no schema code, and a Rust
 * server decodes the payload with serde_json. Raw bytes (`send`, `recv`) stay available for a
 * game's own binary layout, for instance the bincode convention of §5.5.8.
 *
 * @example
 * import { connect } from './quicfeed.js';
 * const session = await connect({ url: 'https://127.0.0.1:4433/quicfeed', credentials: 'ticket-42' });
 * await session.main.sendJson({ hello: 'world' });
 * for await (const update of session.feed.json()) render(update);
 */

// ---------------------------------------------------------------------------------------------
// Constants

/** The ALPN identifier of this protocol version (§2.1). Informative on WebTransport. */
export const PROTOCOL_VERSION = 'quicfeed/1';
/** Largest frame body accepted during the handshake phase (§4.2). */
export const HANDSHAKE_FRAME_LIMIT = 4096;
/** Largest frame body any endpoint accepts (§4.2). */
export const MAX_FRAME_LIMIT = 16777216;
/** Smallest frame limit an endpoint may announce (§4.2). */
export const MIN_FRAME_LIMIT = 256;
/** Most `FEED_INIT`s a client may send on one connection (§6.4). */
export const MAX_FEED_INITS = 8;
/** Longest `CONN_INIT` credentials that keep its body within 4096 bytes (§5.5.1). */
export const MAX_CREDENTIALS = 4082;

const U64_MAX = (1n << 64n) - 1n;
const ACK_EVERY_MESSAGES = 32; // §11.3
const ACK_EVERY_BYTES = 32 * 1024; // §11.3
const MAX_FAILURE_MESSAGE = 256; // §5.5.7, §9.3
const CHANNELS = /** @type {const} */ (['main', 'feed']);
const DECLARATION = { main: 0x00, feed: 0x01 }; // §3.2
const EMPTY = new Uint8Array(0);

/** Message tags (§5.5). */
export const Tag = Object.freeze({
  CONN_INIT: 0,
  CONN_INIT_REPLY: 1,
  FEED_INIT: 2,
  FEED_INIT_REPLY: 3,
  FINAL_AUTH: 4,
  CONN_OK: 5,
  CONN_FAILED: 6,
  DATA: 7,
  ACK: 8,
  RESUME: 9,
  GAP: 10,
});
const TAG_NAMES = Object.keys(Tag);

/** Reason codes (§9.5). */
export const Reason = Object.freeze({
  NORMAL: 0x0000,
  UNEXPECTED_MESSAGE: 0x0001,
  MALFORMED_MESSAGE: 0x0002,
  UNKNOWN_MESSAGE: 0x0003,
  FRAME_TOO_LARGE: 0x0004,
  INVALID_STREAM: 0x0005,
  INVALID_TOKEN: 0x0006,
  TOKEN_EXPIRED: 0x0007,
  TOKEN_REUSED: 0x0008,
  PLAYER_MISMATCH: 0x0009,
  HANDSHAKE_TIMEOUT: 0x000a,
  AUTH_REFUSED: 0x000b,
  SERVER_FULL: 0x000c,
  PLAYER_ID_IN_USE: 0x000d,
  SERVER_SHUTDOWN: 0x000e,
  INTERNAL_ERROR: 0x000f,
  SUPERSEDED: 0x0010,
  UNKNOWN_SESSION: 0x0011,
  DEAD_PATH: 0x0012,
  SESSION_EXPIRED: 0x0013,
  SEQUENCE_ERROR: 0x0014,
  SERVER_BUSY: 0x0015,
  ADDRESS_FULL: 0x0016,
});
const REASON_NAMES = new Map(Object.entries(Reason).map(([name, code]) => [code, name]));

const hex4 = (code) => '0x' + code.toString(16).padStart(4, '0');

/**
 * The name of a reason code: its §9.5 name, `APPLICATION_0x1234` for application codes,
 * `RESERVED_0x0017` for codes reserved to later versions (an "unknown" reason, never an error,
 * §9.4), and `TRANSPORT_ERROR` for `null` (an ending with no quicfeed reason code).
 * @param {number | null | undefined} code
 * @returns {string}
 */
export function reasonName(code) {
  if (code == null) return 'TRANSPORT_ERROR';
  const name = REASON_NAMES.get(code);
  if (name) return name;
  if (code >= 0x1000 && code <= 0xffff) return `APPLICATION_${hex4(code)}`;
  if (code >= 0 && code < 0x1000) return `RESERVED_${hex4(code)}`;
  return 'TRANSPORT_ERROR';
}

// ---------------------------------------------------------------------------------------------
// Errors

/**
 * Every failure this module reports. `code` is the §9.5 reason code, or `null` when there is none
 * (a transport failure, or a local refusal such as `TOO_LARGE`); `reason` is its name (or the
 * local condition: `TRANSPORT_ERROR`, `TOO_LARGE`, `CLOSED`, `DECODE_ERROR`); `detail` is the
 * human-readable text (a server's `CONN_FAILED` message, for instance); `local` is false when the
 * server sent the reason.
 */
export class QuicfeedError extends Error {
  /**
   * @param {number | null} code
   * @param {string} [detail]
   * @param {{reason?: string, retryAfterMs?: number | null, local?: boolean, cause?: unknown}} [extra]
   */
  constructor(code, detail = '', extra = {}) {
    const reason = extra.reason ?? reasonName(code);
    super(detail ? `${reason}: ${detail}` : reason, extra.cause === undefined ? undefined : { cause: extra.cause });
    this.name = 'QuicfeedError';
    /** @type {number | null} */
    this.code = code;
    /** @type {string} */
    this.reason = reason;
    /** @type {string} */
    this.detail = detail;
    /** @type {number | null} */
    this.retryAfterMs = extra.retryAfterMs ?? null;
    /** @type {boolean} */
    this.local = extra.local ?? true;
  }
}

const violation = (code, detail) => new QuicfeedError(code, detail);
const malformed = (detail) => violation(Reason.MALFORMED_MESSAGE, detail);
const localError = (reason, detail, cause) => new QuicfeedError(null, detail, { reason, cause });

// ---------------------------------------------------------------------------------------------
// Bytes

const textEncoder = new TextEncoder();
const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/** Concatenate byte arrays. */
function concat(...parts) {
  let size = 0;
  for (const p of parts) size += p.length;
  const out = new Uint8Array(size);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** A private copy of application bytes (they stay in the replay buffer, §11.4). */
function copyBytes(value, what = 'payload') {
  if (value instanceof Uint8Array) return value.slice();
  if (value instanceof ArrayBuffer) return new Uint8Array(value.slice(0));
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength).slice();
  throw new TypeError(`${what} must be a Uint8Array, an ArrayBuffer or an ArrayBufferView`);
}

/** Constant-time comparison is not needed on the client; this compares tokens by value (§5.1). */
function sameBytes(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * Parse hexadecimal, ignoring colons and whitespace (`AB:CD:…` as openssl prints it).
 * @param {string} text
 * @returns {Uint8Array}
 */
export function fromHex(text) {
  const clean = text.replace(/[\s:]/g, '');
  if (clean.length % 2 !== 0 || /[^0-9a-fA-F]/.test(clean)) throw new TypeError(`not hexadecimal: ${text}`);
  const out = new Uint8Array(clean.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(clean.substr(i * 2, 2), 16);
  return out;
}

/**
 * Lower-case hexadecimal of bytes.
 * @param {Uint8Array} bytes
 * @returns {string}
 */
export function toHex(bytes) {
  let s = '';
  for (const b of bytes) s += b.toString(16).padStart(2, '0');
  return s;
}

function toBigInt(value, what) {
  if (typeof value === 'bigint') return value;
  if (typeof value === 'number' && Number.isSafeInteger(value)) return BigInt(value);
  throw new TypeError(`${what} must be a bigint or a safe integer`);
}

/** A FIFO queue with O(1) shift (replay buffers can hold tens of thousands of messages). */
class Deque {
  #items = [];
  #head = 0;
  get length() {
    return this.#items.length - this.#head;
  }
  push(item) {
    this.#items.push(item);
  }
  peek() {
    return this.#items[this.#head];
  }
  shift() {
    if (this.#head >= this.#items.length) return undefined;
    const item = this.#items[this.#head];
    this.#items[this.#head++] = undefined;
    if (this.#head > 1024 && this.#head * 2 > this.#items.length) {
      this.#items = this.#items.slice(this.#head);
      this.#head = 0;
    }
    return item;
  }
  toArray() {
    return this.#items.slice(this.#head);
  }
  clear() {
    this.#items = [];
    this.#head = 0;
  }
}

// ---------------------------------------------------------------------------------------------
// Codec: varints (§5.1), messages (§5), frames (§4), datagrams (§11.3, §13.2)

/**
 * Size in bytes of the shortest varint encoding of a value (§5.1).
 * @param {bigint | number} value
 * @returns {1 | 3 | 5 | 9}
 */
export function varintSize(value) {
  const v = toBigInt(value, 'value');
  return v <= 250n ? 1 : v <= 0xffffn ? 3 : v <= 0xffffffffn ? 5 : 9;
}

/** Appends bytes to a growing buffer. Encoders write the shortest varint form (§5.1). */
class Writer {
  constructor(size = 32) {
    this.buf = new Uint8Array(size);
    this.len = 0;
  }
  room(n) {
    if (this.len + n <= this.buf.length) return;
    const grown = new Uint8Array(Math.max(this.buf.length * 2, this.len + n));
    grown.set(this.buf.subarray(0, this.len));
    this.buf = grown;
  }
  u8(v) {
    this.room(1);
    this.buf[this.len++] = v;
  }
  bytes(a) {
    this.room(a.length);
    this.buf.set(a, this.len);
    this.len += a.length;
  }
  varint(value, bits, what) {
    const v = toBigInt(value, what);
    if (v < 0n || v >= 1n << BigInt(bits)) throw new RangeError(`${what} out of range for u${bits}: ${v}`);
    if (v <= 250n) return this.u8(Number(v));
    const [marker, size] = v <= 0xffffn ? [0xfb, 2] : v <= 0xffffffffn ? [0xfc, 4] : [0xfd, 8];
    this.u8(marker);
    let x = v;
    for (let i = 0; i < size; i++, x >>= 8n) this.u8(Number(x & 0xffn)); // little-endian
  }
  token(t, what) {
    if (!(t instanceof Uint8Array) || t.length !== 16) throw new TypeError(`${what} must be 16 bytes`);
    this.bytes(t);
  }
  lengthPrefixed(b) {
    this.varint(b.length, 64, 'length');
    this.bytes(b);
  }
  result() {
    return this.buf.slice(0, this.len);
  }
}

/** Reads a body; every failure is a MALFORMED_MESSAGE violation (§5.4). */
class Reader {
  constructor(bytes) {
    this.b = bytes;
    this.p = 0;
  }
  get remaining() {
    return this.b.length - this.p;
  }
  u8() {
    if (this.p >= this.b.length) throw malformed('body ends inside a field');
    return this.b[this.p++];
  }
  take(n) {
    if (n > this.remaining) throw malformed('body ends inside a field');
    const out = this.b.subarray(this.p, this.p + n);
    this.p += n;
    return out;
  }
  /** A varint of a uN field: any form whose payload is at most N bits wide (§5.1). */
  varint(bits) {
    const first = this.u8();
    if (first <= 250) return BigInt(first);
    let size;
    if (first === 0xfb) size = 2;
    else if (first === 0xfc && bits >= 32) size = 4;
    else if (first === 0xfd && bits >= 64) size = 8;
    else throw malformed(`invalid varint marker 0x${first.toString(16)} for a u${bits}`);
    const bytes = this.take(size);
    let v = 0n;
    for (let i = size - 1; i >= 0; i--) v = (v << 8n) | BigInt(bytes[i]);
    return v;
  }
  u16() {
    return Number(this.varint(16));
  }
  u32() {
    return Number(this.varint(32));
  }
  u64() {
    return this.varint(64);
  }
  token() {
    return this.take(16).slice();
  }
  lengthPrefixed() {
    const n = this.u64();
    // Checked against what is there before anything is allocated.
    if (n > BigInt(this.remaining)) throw malformed('length beyond the end of the body');
    return this.take(Number(n)).slice();
  }
  string() {
    const bytes = this.lengthPrefixed();
    try {
      return strictUtf8.decode(bytes);
    } catch {
      throw malformed('invalid UTF-8');
    }
  }
  option(read) {
    const b = this.u8();
    if (b === 0) return null;
    if (b === 1) return read();
    throw malformed(`invalid Option byte 0x${b.toString(16)}`);
  }
  end() {
    if (this.remaining !== 0) throw malformed(`${this.remaining} trailing bytes`);
  }
}

/**
 * A decoded message. u64 fields (player IDs, sequence numbers) are bigints; u16 and u32 fields
 * (reason, frame limits, retry hint) are numbers; tokens and credentials are 16-byte Uint8Arrays.
 * @typedef {(
 *   {type: 'CONN_INIT', maxMainFrame: number, maxFeedFrame: number, credentials: Uint8Array} |
 *   {type: 'CONN_INIT_REPLY', playerId: bigint, tokenA: Uint8Array} |
 *   {type: 'FEED_INIT', playerId: bigint, tokenA: Uint8Array} |
 *   {type: 'FEED_INIT_REPLY', tokenB: Uint8Array} |
 *   {type: 'FINAL_AUTH', tokenB: Uint8Array} |
 *   {type: 'CONN_OK', maxMainFrame: number, maxFeedFrame: number, credential: Uint8Array, mainNext: bigint, feedNext: bigint} |
 *   {type: 'CONN_FAILED', reason: number, message: string, retryAfterMs: number | null} |
 *   {type: 'DATA', seq: bigint, payload: Uint8Array} |
 *   {type: 'ACK', next: bigint} |
 *   {type: 'RESUME', playerId: bigint, proof: Uint8Array, maxMainFrame: number, maxFeedFrame: number, mainNext: bigint, feedNext: bigint} |
 *   {type: 'GAP', next: bigint}
 * )} Message
 */

function writeMessage(w, msg) {
  const tag = Tag[msg.type];
  if (tag === undefined) throw new TypeError(`unknown message type ${msg.type}`);
  w.u8(tag); // §5.2: the tag is a u32 varint; 0..=10 is one byte
  switch (msg.type) {
    case 'CONN_INIT':
      w.varint(msg.maxMainFrame, 32, 'maxMainFrame');
      w.varint(msg.maxFeedFrame, 32, 'maxFeedFrame');
      w.lengthPrefixed(msg.credentials ?? EMPTY);
      break;
    case 'CONN_INIT_REPLY':
    case 'FEED_INIT':
      w.varint(msg.playerId, 64, 'playerId');
      w.token(msg.tokenA, 'tokenA');
      break;
    case 'FEED_INIT_REPLY':
    case 'FINAL_AUTH':
      w.token(msg.tokenB, 'tokenB');
      break;
    case 'CONN_OK':
      w.varint(msg.maxMainFrame, 32, 'maxMainFrame');
      w.varint(msg.maxFeedFrame, 32, 'maxFeedFrame');
      w.token(msg.credential, 'credential');
      w.varint(msg.mainNext, 64, 'mainNext');
      w.varint(msg.feedNext, 64, 'feedNext');
      break;
    case 'CONN_FAILED':
      w.varint(msg.reason, 16, 'reason');
      w.lengthPrefixed(textEncoder.encode(msg.message ?? ''));
      if (msg.retryAfterMs == null) w.u8(0);
      else {
        w.u8(1);
        w.varint(msg.retryAfterMs, 32, 'retryAfterMs');
      }
      break;
    case 'DATA':
      w.varint(msg.seq, 64, 'seq'); // §5.5.8: the sequence number comes before the payload length
      w.lengthPrefixed(msg.payload);
      break;
    case 'ACK':
    case 'GAP':
      w.varint(msg.next, 64, 'next');
      break;
    case 'RESUME':
      w.varint(msg.playerId, 64, 'playerId');
      w.token(msg.proof, 'proof'); // §5.5.10: the frame limits come after the proof here
      w.varint(msg.maxMainFrame, 32, 'maxMainFrame');
      w.varint(msg.maxFeedFrame, 32, 'maxFeedFrame');
      w.varint(msg.mainNext, 64, 'mainNext');
      w.varint(msg.feedNext, 64, 'feedNext');
      break;
  }
}

/**
 * Encode a message as a frame body (§5).
 * @param {Message} msg
 * @returns {Uint8Array}
 */
export function encodeMessage(msg) {
  const w = new Writer(32 + (msg.payload?.length ?? msg.credentials?.length ?? 0));
  writeMessage(w, msg);
  return w.result();
}

/**
 * Encode a message as a complete frame: 4-byte big-endian body length, then the body (§4.1).
 * @param {Message} msg
 * @returns {Uint8Array}
 */
export function encodeFrame(msg) {
  const w = new Writer(36 + (msg.payload?.length ?? msg.credentials?.length ?? 0));
  w.len = 4;
  writeMessage(w, msg);
  const frame = w.result();
  new DataView(frame.buffer).setUint32(0, frame.length - 4);
  return frame;
}

/**
 * Decode one frame body. Throws a {@link QuicfeedError} whose code is the violation's reason:
 * `MALFORMED_MESSAGE` or `UNKNOWN_MESSAGE` (§5.2, §5.4).
 * @param {Uint8Array} body
 * @returns {Message}
 */
export function decodeMessage(body) {
  if (body.length === 0) throw malformed('empty body'); // §4.1
  const r = new Reader(body);
  const tag = r.varint(32); // §5.2: fd/fe/ff or truncated → MALFORMED_MESSAGE
  if (tag >= BigInt(TAG_NAMES.length)) throw violation(Reason.UNKNOWN_MESSAGE, `tag ${tag}`);
  const type = TAG_NAMES[Number(tag)];
  let msg;
  switch (type) {
    case 'CONN_INIT':
      msg = { type, maxMainFrame: r.u32(), maxFeedFrame: r.u32(), credentials: r.lengthPrefixed() };
      break;
    case 'CONN_INIT_REPLY':
    case 'FEED_INIT':
      msg = { type, playerId: r.u64(), tokenA: r.token() };
      break;
    case 'FEED_INIT_REPLY':
    case 'FINAL_AUTH':
      msg = { type, tokenB: r.token() };
      break;
    case 'CONN_OK':
      msg = { type, maxMainFrame: r.u32(), maxFeedFrame: r.u32(), credential: r.token(), mainNext: r.u64(), feedNext: r.u64() };
      break;
    case 'CONN_FAILED':
      msg = { type, reason: r.u16(), message: r.string(), retryAfterMs: r.option(() => r.u32()) };
      break;
    case 'DATA': {
      const seq = r.u64();
      const length = r.u64();
      // §5.4: the payload length must equal exactly what follows it.
      if (length !== BigInt(r.remaining)) throw malformed('DATA payload length does not match the body');
      msg = { type, seq, payload: r.take(r.remaining).slice() };
      break;
    }
    case 'ACK':
    case 'GAP':
      msg = { type, next: r.u64() };
      break;
    case 'RESUME':
      msg = {
        type,
        playerId: r.u64(),
        proof: r.token(),
        maxMainFrame: r.u32(),
        maxFeedFrame: r.u32(),
        mainNext: r.u64(),
        feedNext: r.u64(),
      };
      break;
  }
  r.end(); // §5.4: no trailing bytes
  return msg;
}

/**
 * Decode one complete frame (prefix and body, nothing more), checking its length against a limit.
 * @param {Uint8Array} frame
 * @param {number} [limit]
 * @returns {Message}
 */
export function decodeFrame(frame, limit = MAX_FRAME_LIMIT) {
  const d = new FrameDecoder();
  d.push(frame);
  const body = d.next(limit);
  if (!body || d.buffered !== 0) throw malformed('not exactly one frame');
  return decodeMessage(body);
}

/**
 * Reassembles frames from a stream's chunks (§4.1). The body length is checked as soon as the
 * four prefix bytes are there, before any of the body is buffered beyond the chunk it came in
 * (§4.3); the body is allocated only once complete.
 */
export class FrameDecoder {
  #chunks = new Deque();
  #offset = 0; // into the first chunk
  #size = 0;

  /** @param {Uint8Array} chunk */
  push(chunk) {
    if (chunk.length === 0) return;
    this.#chunks.push(chunk);
    this.#size += chunk.length;
  }

  /** Bytes received and not yet returned as a frame. */
  get buffered() {
    return this.#size;
  }

  /**
   * The next complete body, or null if it has not fully arrived.
   * @param {number} limit the limit in force for the channel and phase (§4.3)
   * @returns {Uint8Array | null}
   */
  next(limit) {
    if (this.#size < 4) return null;
    const prefix = this.#peek(4);
    const length = ((prefix[0] << 24) >>> 0) + (prefix[1] << 16) + (prefix[2] << 8) + prefix[3];
    if (length > limit) throw violation(Reason.FRAME_TOO_LARGE, `frame body of ${length} bytes, limit ${limit}`);
    if (length === 0) throw malformed('empty frame body');
    if (this.#size < 4 + length) return null;
    this.#consume(4);
    return this.#consume(length);
  }

  #peek(n) {
    const out = new Uint8Array(n);
    let got = 0;
    let offset = this.#offset;
    for (const chunk of this.#chunks.toArray()) {
      const part = chunk.subarray(offset, offset + (n - got));
      out.set(part, got);
      got += part.length;
      offset = 0;
      if (got === n) break;
    }
    return out;
  }

  #consume(n) {
    const out = new Uint8Array(n);
    let got = 0;
    while (got < n) {
      const chunk = this.#chunks.peek();
      const part = chunk.subarray(this.#offset, this.#offset + (n - got));
      out.set(part, got);
      got += part.length;
      this.#offset += part.length;
      if (this.#offset === chunk.length) {
        this.#chunks.shift();
        this.#offset = 0;
      }
    }
    this.#size -= n;
    return out;
  }
}

/**
 * A decoded datagram: a lane message (§13.2) or an acknowledgement datagram (§11.3).
 * @typedef {{kind: 'lane', seq: bigint, sentMs: bigint, payload: Uint8Array} |
 *           {kind: 'ack', mainNext: bigint, feedNext: bigint}} Datagram
 */

/**
 * Encode a lane datagram: `01`, seq, sent_ms, payload (§13.2).
 * @param {bigint | number} seq
 * @param {bigint | number} sentMs
 * @param {Uint8Array} payload
 * @returns {Uint8Array}
 */
export function encodeLaneDatagram(seq, sentMs, payload) {
  const w = new Writer(20 + payload.length);
  w.u8(0x01);
  w.varint(seq, 64, 'seq');
  w.varint(sentMs, 64, 'sentMs');
  w.bytes(payload);
  return w.result();
}

/**
 * Encode an acknowledgement datagram: `02`, main_next, feed_next (§11.3).
 * @param {bigint | number} mainNext
 * @param {bigint | number} feedNext
 * @returns {Uint8Array}
 */
export function encodeAckDatagram(mainNext, feedNext) {
  const w = new Writer(19);
  w.u8(0x02);
  w.varint(mainNext, 64, 'mainNext');
  w.varint(feedNext, 64, 'feedNext');
  return w.result();
}

/**
 * Decode a datagram; throws `MALFORMED_MESSAGE` or `UNKNOWN_MESSAGE` as §13.5 says.
 * @param {Uint8Array} bytes
 * @returns {Datagram}
 */
export function decodeDatagram(bytes) {
  if (bytes.length === 0) throw malformed('empty datagram');
  const r = new Reader(bytes);
  const kind = r.u8();
  if (kind === 0x01) {
    const seq = r.u64();
    const sentMs = r.u64();
    return { kind: 'lane', seq, sentMs, payload: r.take(r.remaining).slice() };
  }
  if (kind === 0x02) {
    const mainNext = r.u64();
    const feedNext = r.u64();
    r.end();
    return { kind: 'ack', mainNext, feedNext };
  }
  throw violation(Reason.UNKNOWN_MESSAGE, `datagram kind 0x${kind.toString(16).padStart(2, '0')}`);
}

// ---------------------------------------------------------------------------------------------
// The resume proof over WebTransport

const PROOF_LABEL = textEncoder.encode('quicfeed-resume-webtransport'); // 28 ASCII bytes

/**
 * The HMAC message of the WebTransport resume proof: the 28 ASCII bytes
 * `quicfeed-resume-webtransport`, then the player ID as u64 big-endian.
 * @param {bigint | number} playerId
 * @returns {Uint8Array}
 */
export function resumeProofMessage(playerId) {
  const out = new Uint8Array(PROOF_LABEL.length + 8);
  out.set(PROOF_LABEL);
  new DataView(out.buffer).setBigUint64(PROOF_LABEL.length, toBigInt(playerId, 'playerId'), false);
  return out;
}

/**
 * The `proof` field of `RESUME` on WebTransport: the first 16 bytes of
 * HMAC-SHA256(key = credential, message = {@link resumeProofMessage}), computed with WebCrypto.
 * (A native client uses the TLS exporter of §7.2 instead, which a browser cannot reach.)
 * @param {Uint8Array} credential the 16-byte credential of the last `CONN_OK`
 * @param {bigint | number} playerId
 * @param {SubtleCrypto} [subtle]
 * @returns {Promise<Uint8Array>}
 */
export async function webTransportResumeProof(credential, playerId, subtle = globalThis.crypto?.subtle) {
  if (!subtle) throw localError('INTERNAL_ERROR', 'WebCrypto (crypto.subtle) is not available: a secure context is needed');
  const key = await subtle.importKey('raw', credential, { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
  const mac = new Uint8Array(await subtle.sign('HMAC', key, resumeProofMessage(playerId)));
  return mac.slice(0, 16);
}

// ---------------------------------------------------------------------------------------------
// Reliable delivery (§11), per channel and direction

/**
 * Sending side of one channel: numbering (§11.1) and the replay buffer (§11.4).
 */
export class SendChannel {
  /** @param {number} capacity replay buffer capacity in payload bytes */
  constructor(capacity) {
    this.capacity = capacity;
    /** Number of the next new message. */
    this.nextSeq = 0n;
    /** One above the highest number written to a stream, on any connection of the session. */
    this.writtenNext = 0n;
    /** The highest `next` the peer has acknowledged. */
    this.acked = 0n;
    /** Messages dropped unacknowledged because the buffer was full (the next replay sends a GAP). */
    this.overflowed = 0;
    this.kept = new Deque();
    this.keptBytes = 0;
  }

  /**
   * Number a new message and keep it. When the buffer goes over its capacity, the oldest are
   * dropped; the newest is always kept (§11.4).
   * @param {Uint8Array} payload
   * @returns {bigint} its sequence number
   */
  push(payload) {
    const seq = this.nextSeq++;
    this.kept.push({ seq, payload });
    this.keptBytes += payload.length;
    while (this.keptBytes > this.capacity && this.kept.length > 1) {
      this.keptBytes -= this.kept.shift().payload.length;
      this.overflowed++;
    }
    return seq;
  }

  /** @param {bigint} seq a message just handed to a stream */
  markWritten(seq) {
    if (seq >= this.writtenNext) this.writtenNext = seq + 1n;
  }

  /**
   * Process an acknowledgement (in-band ACK, datagram, or the `next` of CONN_OK).
   * @param {bigint} next
   * @returns {number} how many kept messages it released
   */
  ack(next) {
    // §5.5.9: above what was written to a stream is SEQUENCE_ERROR; lower than before changes nothing.
    if (next > this.writtenNext) {
      throw violation(Reason.SEQUENCE_ERROR, `acknowledgement up to ${next}, but ${this.writtenNext} were sent`);
    }
    if (next <= this.acked) return 0;
    this.acked = next;
    let released = 0;
    while (this.kept.length && this.kept.peek().seq < next) {
      this.keptBytes -= this.kept.shift().payload.length;
      released++;
    }
    return released;
  }

  /**
   * The replay of §11.5 from the peer's `next`: a GAP first if the buffer no longer holds every
   * message the peer is missing, then every kept message in order.
   * @param {bigint} peerNext
   * @returns {{gap: bigint | null, messages: {seq: bigint, payload: Uint8Array}[]}}
   */
  replay(peerNext) {
    this.ack(peerNext);
    const first = this.kept.length ? this.kept.peek().seq : this.nextSeq;
    return { gap: first > peerNext ? first : null, messages: this.kept.toArray() };
  }

  /** Every message numbered so far has been acknowledged. */
  get allAcked() {
    return this.acked >= this.nextSeq;
  }
}

/**
 * Receiving side of one channel (§11.2, §11.5).
 */
export class RecvChannel {
  /** The number of the next DATA expected. */
  next = 0n;

  /**
   * Classify a received DATA.
   * @param {bigint} seq
   * @returns {boolean} true to deliver it, false for a duplicate (dropped silently)
   */
  data(seq) {
    if (seq === U64_MAX) throw violation(Reason.SEQUENCE_ERROR, 'DATA numbered 2^64 - 1');
    if (seq > this.next) throw violation(Reason.SEQUENCE_ERROR, `DATA ${seq} while ${this.next} was expected`);
    if (seq < this.next) return false;
    this.next = seq + 1n;
    return true;
  }

  /**
   * Process a GAP.
   * @param {bigint} next
   * @returns {bigint} how many messages were lost (0n if the GAP is not ahead)
   */
  gap(next) {
    if (next <= this.next) return 0n;
    const missed = next - this.next;
    this.next = next;
    return missed;
  }
}

// ---------------------------------------------------------------------------------------------
// The lane (§13)

/**
 * Receiving side of the lane: newest wins (§13.4), with the optional maximum age measured on
 * the extra transit over the fastest datagram of the last 10 to 20 seconds.
 */
export class LaneReceiver {
  /** @param {number | null} [maxAgeMs] */
  constructor(maxAgeMs = null, windowMs = 10000) {
    this.maxAgeMs = maxAgeMs;
    this.windowMs = windowMs;
    /** @type {bigint | null} the highest seq accepted */
    this.newest = null;
    this.windowStart = null;
    this.currentMin = Infinity;
    this.previousMin = Infinity;
  }

  /**
   * @param {bigint} seq
   * @param {bigint} sentMs the sender's clock
   * @param {number} arrivalMs this side's clock (ms since its session began)
   * @returns {'deliver' | 'stale' | 'old'}
   */
  accept(seq, sentMs, arrivalMs) {
    if (this.newest !== null && seq <= this.newest) return 'stale';
    this.newest = seq;
    const age = this.#age(arrivalMs - Number(sentMs), arrivalMs);
    if (this.maxAgeMs != null && age > this.maxAgeMs) return 'old';
    return 'deliver';
  }

  #age(transit, now) {
    if (this.windowStart === null) this.windowStart = now;
    if (now - this.windowStart >= this.windowMs) {
      // Two windows of 10 s: the current and the previous one.
      this.previousMin = now - this.windowStart >= 2 * this.windowMs ? Infinity : this.currentMin;
      this.currentMin = Infinity;
      this.windowStart = now;
    }
    this.currentMin = Math.min(this.currentMin, transit);
    return transit - Math.min(this.currentMin, this.previousMin);
  }
}

// ---------------------------------------------------------------------------------------------
// Resume policy (§12.3, with the WebTransport client's defaults)

/**
 * When to try a resume again: at once, then after a backoff that doubles up to a cap, each wait
 * multiplied by a random factor in 0.5 ..= 1.5, all within a budget; each attempt has its own
 * deadline, never past the budget.
 */
export class ResumePolicy {
  /**
   * @param {{budgetMs?: number, attemptTimeoutMs?: number, backoffMs?: number, backoffMaxMs?: number, random?: () => number}} options
   * @param {number} now
   */
  constructor(options, now) {
    this.end = now + (options.budgetMs ?? 10000);
    this.attemptTimeoutMs = options.attemptTimeoutMs ?? 2000;
    this.backoff = options.backoffMs ?? 250;
    this.backoffMax = options.backoffMaxMs ?? 2000;
    this.random = options.random ?? Math.random;
  }

  /** @param {number} now @returns {number} the deadline of an attempt starting now */
  attemptDeadline(now) {
    return Math.min(now + this.attemptTimeoutMs, this.end);
  }

  /**
   * The wait before the next attempt, or null to give up (the wait would reach the end of the
   * budget).
   * @param {number} now
   * @returns {number | null}
   */
  nextDelay(now) {
    const delay = this.backoff * (0.5 + this.random());
    this.backoff = Math.min(this.backoff * 2, this.backoffMax);
    return now + delay >= this.end ? null : delay;
  }
}

// ---------------------------------------------------------------------------------------------
// The protocol state machine

/** Defaults, from PROTOCOL.md (§4.2, §8, §11, §2.3) unless said otherwise. */
export const DEFAULTS = Object.freeze({
  maxMainFrame: 65536,
  maxFeedFrame: 65536,
  handshakeTimeoutMs: 10000,
  feedInitRetryMs: 1000,
  feedInitAttempts: 3,
  ackDelayMs: 112.5,
  replayBufferBytes: 128 * 1024,
  sendBufferBytes: 64 * 1024,
  receiveBufferBytes: 64 * 1024,
  laneReceiveBufferBytes: 64 * 1024,
  laneMaxAgeMs: null,
  closeLingerMs: 2000,
  finishGraceMs: 3000,
  livenessTimeoutMs: 0,
  // The WebTransport client's resume policy (PROTOCOL.md's reference: 10 s, 100 ms, 1 s).
  resumeBudgetMs: 10000,
  resumeAttemptTimeoutMs: 2000,
  resumeBackoffMs: 250,
  resumeBackoffMaxMs: 2000,
});

function checkLimit(value, what) {
  if (!Number.isInteger(value) || value < MIN_FRAME_LIMIT || value > MAX_FRAME_LIMIT) {
    throw new RangeError(`${what} must be an integer in ${MIN_FRAME_LIMIT} ..= ${MAX_FRAME_LIMIT}`);
  }
  return value;
}

function credentialBytes(value) {
  if (value == null) return EMPTY;
  const bytes = typeof value === 'string' ? textEncoder.encode(value) : copyBytes(value, 'credentials');
  if (bytes.length > MAX_CREDENTIALS) throw new RangeError(`credentials are ${bytes.length} bytes, at most ${MAX_CREDENTIALS}`);
  return bytes;
}

/**
 * Largest DATA payload under a peer's frame limit, whatever the sequence number (a 9-byte varint
 * is assumed, as the reference does, §5.5.8): 65523 for 65536, 245 for 256.
 * @param {number} limit
 * @returns {number}
 */
export function maxDataPayload(limit) {
  let best = -1;
  for (const size of [1, 3, 5, 9]) {
    const payload = limit - 1 - 9 - size;
    if (payload >= 0 && varintSize(payload) <= size) best = Math.max(best, payload);
  }
  return best;
}

function cutUtf8(text, max) {
  const bytes = textEncoder.encode(text);
  if (bytes.length <= max) return text;
  let end = max;
  while (end > 0 && (bytes[end] & 0xc0) === 0x80) end--; // back to a character boundary
  return new TextDecoder().decode(bytes.subarray(0, end));
}

/**
 * @typedef {(
 *   {op: 'write', channel: 'main' | 'feed', bytes: Uint8Array} |
 *   {op: 'datagram', bytes: Uint8Array} |
 *   {op: 'finish', channel: 'main' | 'feed'} |
 *   {op: 'close', code: number, message: string} |
 *   {op: 'established', resumed: boolean} |
 *   {op: 'failed', error: QuicfeedError} |
 *   {op: 'retry', error: QuicfeedError} |
 *   {op: 'lost', error: QuicfeedError | null} |
 *   {op: 'ended', error: QuicfeedError} |
 *   {op: 'lane', seq: bigint, payload: Uint8Array}
 * )} Action
 * What the state machine asks its driver to do, in order. `write` appends to the current
 * connection's stream; `close` closes the current connection (and is always followed by an
 * outcome); `failed` ends a first handshake (no session); `retry` ends a resume attempt that may
 * be tried again; `lost` says the established connection is gone but the session survives
 * (resume it); `ended` ends the session.
 */

/**
 * The client's protocol logic, without any I/O: one session and its current connection. The
 * driver feeds it stream bytes, stream ends, datagrams, connection losses and timer ticks, each
 * with the current time in milliseconds, and carries out the {@link Action}s it returns from
 * {@link SessionCore#takeActions}. Nothing here throws on peer input: a violation becomes a
 * `close` and an outcome (§9.2, §9.3).
 *
 * Session states: `idle` → `handshake` → `established` ⇄ `resuming` → `closing` → `closed`.
 */
export class SessionCore {
  #actions = [];

  /**
   * @param {object} [options]
   * @param {Uint8Array | ArrayBuffer | string} [options.credentials] CONN_INIT credentials
   * @param {number} [options.maxMainFrame] own frame limits, announced in CONN_INIT / RESUME
   * @param {number} [options.maxFeedFrame]
   * @param {number} [options.feedInitRetryMs]
   * @param {number} [options.feedInitAttempts]
   * @param {number} [options.ackDelayMs]
   * @param {number} [options.replayBufferBytes]
   * @param {number} [options.receiveBufferBytes]
   * @param {number | null} [options.laneMaxAgeMs]
   * @param {number} [options.closeLingerMs]
   * @param {number} [options.finishGraceMs]
   * @param {number} [options.livenessTimeoutMs] 0: off
   */
  constructor(options = {}) {
    const o = { ...DEFAULTS, ...Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) };
    checkLimit(o.maxMainFrame, 'maxMainFrame');
    checkLimit(o.maxFeedFrame, 'maxFeedFrame');
    if (!Number.isInteger(o.feedInitAttempts) || o.feedInitAttempts < 1 || o.feedInitAttempts > MAX_FEED_INITS) {
      throw new RangeError(`feedInitAttempts must be 1 ..= ${MAX_FEED_INITS}`);
    }
    o.credentials = credentialBytes(options.credentials);
    /** Resolved options. */
    this.options = o;
    /** @type {'idle' | 'handshake' | 'established' | 'resuming' | 'closing' | 'closed'} */
    this.state = 'idle';
    /** @type {bigint | null} */
    this.playerId = null;
    /** @type {Uint8Array | null} the credential of the last CONN_OK (a secret, §7.2) */
    this.credential = null;
    /** @type {{main: number, feed: number} | null} the limits the server announced in its last CONN_OK */
    this.peerLimits = null;
    this.out = { main: new SendChannel(o.replayBufferBytes), feed: new SendChannel(o.replayBufferBytes) };
    this.in = { main: new RecvChannel(), feed: new RecvChannel() };
    this.queues = { main: new Deque(), feed: new Deque() };
    this.queuedBytes = { main: 0, feed: 0 };
    this.laneSeq = 0n;
    this.lane = new LaneReceiver(o.laneMaxAgeMs);
    this.epoch = 0;
    /** Current connection state, or null. */
    this.conn = null;
    /** @type {QuicfeedError | null} why the session ended */
    this.error = null;
    /** @type {number | null} smoothed round trip on main */
    this.rttMs = null;
    /** @type {number | null} */
    this.minRttMs = null;
    this.stats = {
      resumes: 0,
      resumeAttempts: 0,
      replayed: 0,
      gaps: 0,
      missed: 0,
      datagramsIgnored: 0,
      main: { sent: 0, received: 0, duplicates: 0 },
      feed: { sent: 0, received: 0, duplicates: 0 },
      lane: { sent: 0, received: 0, dropped: 0, stale: 0, tooOld: 0 },
    };
  }

  /** @returns {Action[]} the actions produced since the last call */
  takeActions() {
    const a = this.#actions;
    this.#actions = [];
    return a;
  }

  /** Whether actions are waiting. */
  get hasActions() {
    return this.#actions.length > 0;
  }

  // --- starting a connection ----------------------------------------------------------------

  #newConnection(kind, phase, now, deadline, datagrams) {
    this.conn = {
      kind,
      phase,
      deadline,
      datagrams: !!datagrams,
      decoders: { main: new FrameDecoder(), feed: new FrameDecoder() },
      eof: { main: false, feed: false },
      fin: { main: false, feed: false },
      finWritten: { main: false, feed: false },
      peerFinAt: null,
      closeAt: null,
      closeCode: 0,
      closeMessage: '',
      feedInit: null,
      feedInits: 0,
      retryAt: null,
      tokenB: null,
      lateCopies: 0,
      probe: null,
      ack: { main: { msgs: 0, bytes: 0, dueAt: null }, feed: { msgs: 0, bytes: 0, dueAt: null } },
      blocked: { main: false, feed: false },
      lastReceiveAt: now,
    };
    return this.conn;
  }

  /**
   * Start the first handshake on a new connection whose streams are open: writes `00` and
   * `CONN_INIT` on main (§6.1).
   * @param {number} now
   * @param {number} deadline absolute time of the client handshake deadline (§8)
   * @param {{datagrams?: boolean}} [transport] whether the peer accepts datagrams
   */
  startFirst(now, deadline, transport = {}) {
    if (this.state !== 'idle') throw new Error(`startFirst in state ${this.state}`);
    this.state = 'handshake';
    this.epoch = now;
    this.#newConnection('first', 'init', now, deadline, transport.datagrams);
    const o = this.options;
    this.#write('main', concat([DECLARATION.main], encodeFrame({ type: 'CONN_INIT', maxMainFrame: o.maxMainFrame, maxFeedFrame: o.maxFeedFrame, credentials: o.credentials })));
  }

  /**
   * Start a resume attempt on a new connection whose streams are open: writes `00` and `RESUME`
   * on main, then `01` alone on feed (§6.6.1). `next` values are read now, as late as possible.
   * @param {Uint8Array} proof the proof of {@link SessionCore#credential} on this connection
   * @param {number} now
   * @param {number} deadline absolute time of this attempt's deadline
   * @param {{datagrams?: boolean}} [transport]
   */
  startResume(proof, now, deadline, transport = {}) {
    if (this.state !== 'resuming' || this.conn) throw new Error(`startResume in state ${this.state}`);
    const k = this.#newConnection('resume', 'resume', now, deadline, transport.datagrams);
    const o = this.options;
    k.probe = { at: now };
    this.stats.resumeAttempts++;
    const resume = encodeFrame({
      type: 'RESUME',
      playerId: this.playerId,
      proof,
      maxMainFrame: o.maxMainFrame,
      maxFeedFrame: o.maxFeedFrame,
      mainNext: this.in.main.next,
      feedNext: this.in.feed.next,
    });
    this.#write('main', concat([DECLARATION.main], resume));
    this.#write('feed', new Uint8Array([DECLARATION.feed]));
  }

  // --- what the driver asks -----------------------------------------------------------------

  /**
   * Whether the stream of a channel is read now. Feed is not read between FEED_INIT_REPLY (or
   * RESUME) and CONN_OK (§6.5); an established channel is not read while its receive queue is
   * full (§11.2).
   * @param {'main' | 'feed'} channel
   */
  readable(channel) {
    const k = this.conn;
    if (!k) return false;
    switch (k.phase) {
      case 'init':
      case 'connOk':
      case 'resume':
        return channel === 'main';
      case 'feedInit':
        return true;
      case 'established':
        return this.queuedBytes[channel] < this.options.receiveBufferBytes;
      default:
        return false;
    }
  }

  /**
   * Whether the driver should read more bytes from a channel's stream.
   * @param {'main' | 'feed'} channel
   */
  wantsData(channel) {
    return this.readable(channel) && !this.conn.eof[channel];
  }

  /**
   * The frame limit in force for reading a channel (§4.3).
   * @param {'main' | 'feed'} channel
   */
  frameLimit(channel) {
    if (this.conn?.phase !== 'established') return HANDSHAKE_FRAME_LIMIT;
    return channel === 'main' ? this.options.maxMainFrame : this.options.maxFeedFrame;
  }

  /** The earliest time {@link SessionCore#onTimer} has something to do, or null. */
  nextTimer() {
    const k = this.conn;
    if (!k) return null;
    let at = Infinity;
    if (k.phase !== 'established') {
      at = Math.min(at, k.deadline);
      if (k.retryAt != null) at = Math.min(at, k.retryAt);
      return at;
    }
    for (const c of CHANNELS) if (k.ack[c].dueAt != null) at = Math.min(at, k.ack[c].dueAt);
    if (k.peerFinAt != null) at = Math.min(at, k.peerFinAt + this.options.finishGraceMs);
    if (k.closeAt != null) at = Math.min(at, k.closeAt);
    if (this.options.livenessTimeoutMs > 0) at = Math.min(at, k.lastReceiveAt + this.options.livenessTimeoutMs);
    return at === Infinity ? null : at;
  }

  // --- inputs -------------------------------------------------------------------------------

  /**
   * Bytes read from a channel's stream of the current connection.
   * @param {'main' | 'feed'} channel
   * @param {Uint8Array} chunk
   * @param {number} now
   */
  onStreamData(channel, chunk, now) {
    const k = this.conn;
    if (!k) return;
    k.lastReceiveAt = now;
    k.decoders[channel].push(chunk);
    this.#pump(channel, now);
  }

  /**
   * The server finished (FIN) a channel's stream.
   * @param {'main' | 'feed'} channel
   * @param {number} now
   */
  onStreamEnd(channel, now) {
    const k = this.conn;
    if (!k || k.eof[channel]) return;
    k.eof[channel] = true;
    this.#pump(channel, now);
  }

  /**
   * The server reset a stream, or stopped it (a write failed) (§3.3).
   * @param {'main' | 'feed'} channel
   * @param {number} now
   */
  onStreamReset(channel, now) {
    const k = this.conn;
    if (!k) return;
    if (k.phase === 'established') {
      if (this.state === 'closing') return this.#completeClose();
      // §3.3: close with SUPERSEDED and resume; both channels keep their messages for the replay.
      this.#close(Reason.SUPERSEDED, `${channel} stream reset by the server`);
      return this.#lost(null);
    }
    this.#fail(violation(Reason.INVALID_STREAM, `${channel} stream reset or stopped by the server`), now);
  }

  /**
   * A datagram of the current connection.
   * @param {Uint8Array} bytes
   * @param {number} now
   */
  onDatagram(bytes, now) {
    const k = this.conn;
    if (!k) return;
    k.lastReceiveAt = now;
    // §13.1: processed only on an established connection; earlier ones are dropped here (they
    // are unreliable anyway, and a lost acknowledgement datagram is harmless, §11.3).
    if (k.phase !== 'established') {
      this.stats.datagramsIgnored++;
      return;
    }
    try {
      const d = decodeDatagram(bytes);
      if (d.kind === 'ack') {
        this.#onAck('main', d.mainNext, now);
        this.#onAck('feed', d.feedNext, now);
        return;
      }
      if (this.state === 'closing') return;
      const verdict = this.lane.accept(d.seq, d.sentMs, now - this.epoch);
      if (verdict === 'stale') this.stats.lane.stale++;
      else if (verdict === 'old') this.stats.lane.tooOld++;
      else {
        this.stats.lane.received++;
        this.#actions.push({ op: 'lane', seq: d.seq, payload: d.payload });
      }
    } catch (e) {
      this.#fail(e, now);
    }
  }

  /**
   * The current connection is gone (the transport closed or failed).
   * @param {number} now
   * @param {{closeCode?: number, reason?: string} | null} [info] a close code, if the transport
   *   reported one (a WebTransport session closed with a code); read as a §9.4 reason code
   */
  connectionLost(now, info = null) {
    const k = this.conn;
    if (!k) return;
    const code = typeof info?.closeCode === 'number' ? info.closeCode : null;
    const detail = info?.reason ?? '';
    const peerError = (c) => new QuicfeedError(c, detail, { local: false });
    if (this.state === 'closing') return this.#completeClose(); // §3.3: the close completes ours
    switch (k.phase) {
      case 'init':
      case 'feedInit':
      case 'connOk':
        // §9.1: a close code seen before CONN_FAILED stands for the refusal.
        this.conn = null;
        this.state = 'closed';
        this.error = code !== null && code !== Reason.NORMAL && code <= 0xffff ? peerError(code) : localError('TRANSPORT_ERROR', 'connection lost during the handshake');
        return this.#actions.push({ op: 'failed', error: this.error });
      case 'resume':
        // §9.2 / §12.3: a close with a reason ends the session, except those a resume itself can
        // cause, and SERVER_BUSY (§9.5: retried within the budget); a plain loss is retried.
        if (code !== null && code <= 0xffff && !RETRYABLE_RESUME_CLOSES.has(code)) return this.#end(peerError(code));
        return this.#retry(localError('TRANSPORT_ERROR', 'connection lost during the resume'));
      case 'established':
        // §3.3 / §9.3: after a FIN, the close that follows is the graceful end, with the reason
        // the farewell gave (NORMAL unless the server's application chose another).
        if (k.fin.main || k.fin.feed) {
          // (A close that would keep the session, DEAD_PATH say, cannot here: the server was
          // ending it. It reads as the graceful end.)
          if (code !== null && code <= 0xffff && !SURVIVING_CLOSES.has(code)) return this.#end(new QuicfeedError(code, detail || 'closed by the server', { local: false }));
          return this.#end(new QuicfeedError(Reason.NORMAL, 'closed by the server', { local: false }));
        }
        // §9.4: a close code that keeps the session, or none at all: resume.
        if (code === null || code > 0xffff || SURVIVING_CLOSES.has(code)) return this.#lost(localError('TRANSPORT_ERROR', 'connection lost'));
        return this.#end(peerError(code));
    }
  }

  /**
   * Timers: handshake deadline, FEED_INIT retries, acknowledgement delay, finish grace, close
   * linger, liveness.
   * @param {number} now
   */
  onTimer(now) {
    const k = this.conn;
    if (!k) return;
    if (k.phase !== 'established') {
      if (now >= k.deadline) return this.#timeout();
      if (k.retryAt != null && now >= k.retryAt) {
        if (k.feedInits >= this.options.feedInitAttempts) return this.#timeout();
        this.#write('feed', k.feedInit); // §6.5: the same FEED_INIT again
        k.feedInits++;
        k.retryAt = now + this.options.feedInitRetryMs;
      }
      return;
    }
    for (const c of CHANNELS) if (k.ack[c].dueAt != null && now >= k.ack[c].dueAt) this.#ack(c);
    if (k.closeAt != null && now >= k.closeAt) return this.#completeClose();
    if (k.peerFinAt != null && now >= k.peerFinAt + this.options.finishGraceMs) {
      // §3.3: the server's close did not come; end the session as it asked.
      this.#close(Reason.NORMAL, '');
      return this.#end(new QuicfeedError(Reason.NORMAL, 'closed by the server', { local: false }));
    }
    const liveness = this.options.livenessTimeoutMs;
    if (liveness > 0 && this.state === 'established' && now >= k.lastReceiveAt + liveness) {
      this.#close(Reason.DEAD_PATH, 'nothing received');
      return this.#lost(localError('TRANSPORT_ERROR', `nothing received for ${liveness} ms`));
    }
  }

  // --- application requests -----------------------------------------------------------------

  /**
   * Largest payload a `send` on a channel accepts now (under the server's last frame limit).
   * @param {'main' | 'feed'} channel
   */
  maxPayload(channel) {
    return this.peerLimits ? maxDataPayload(this.peerLimits[channel]) : 0;
  }

  /**
   * Number a message, keep it for replay, and write it if the session has a connection (§11.4).
   * Throws `TOO_LARGE` or `CLOSED`.
   * @param {'main' | 'feed'} channel
   * @param {Uint8Array} payload owned by the session from now on
   * @param {number} now
   * @returns {bigint} its sequence number
   */
  send(channel, payload, now) {
    if (this.state !== 'established' && this.state !== 'resuming') {
      throw this.error ?? localError('CLOSED', `cannot send: the session is ${this.state}`);
    }
    const max = this.maxPayload(channel);
    if (payload.length > max) throw localError('TOO_LARGE', `${payload.length} bytes on ${channel}, at most ${max}`);
    const seq = this.out[channel].push(payload);
    const k = this.conn;
    if (this.state === 'established' && !k.blocked[channel]) this.#writeData(channel, seq, payload, now);
    return seq;
  }

  /**
   * Send a lane message now (a `datagram` action), or drop it when there is no established
   * connection (§13.1). Throws `TOO_LARGE` if the datagram would exceed `maxDatagramSize`.
   * @param {Uint8Array} payload
   * @param {number} now
   * @param {number | null} [maxDatagramSize]
   * @returns {bigint | null} its lane sequence number, or null if dropped
   */
  laneSend(payload, now, maxDatagramSize = null) {
    const k = this.conn;
    if (this.state !== 'established' || !k?.datagrams) {
      this.stats.lane.dropped++;
      return null;
    }
    const seq = this.laneSeq;
    const bytes = encodeLaneDatagram(seq, Math.max(0, Math.floor(now - this.epoch)), payload);
    if (maxDatagramSize != null && bytes.length > maxDatagramSize) {
      throw localError('TOO_LARGE', `lane datagram of ${bytes.length} bytes, the path takes at most ${maxDatagramSize}`);
    }
    this.laneSeq++;
    this.stats.lane.sent++;
    this.#actions.push({ op: 'datagram', bytes });
    return seq;
  }

  /**
   * Take the next item of a channel's receive queue: `{payload}` for a message, `{missed}` for
   * messages reported lost by a GAP (§11.5). Reading may let the stream be read again.
   * @param {'main' | 'feed'} channel
   * @param {number} now
   * @returns {{payload: Uint8Array} | {missed: bigint} | undefined}
   */
  popReceived(channel, now) {
    const item = this.queues[channel].shift();
    if (item?.payload) this.queuedBytes[channel] -= item.payload.length;
    if (item && this.conn) this.#pump(channel, now);
    return item;
  }

  /**
   * Start a graceful close (§9.3): no new sends; FIN both streams (`finish` actions; report
   * them done with {@link SessionCore#onFinWritten}); close once every message sent is
   * acknowledged, at most the close linger later. Without a connection the session ends at once
   * and nothing is sent.
   * @param {number} code
   * @param {string} message
   * @param {number} now
   */
  beginClose(code, message, now) {
    if (this.state === 'closing' || this.state === 'closed') return;
    const k = this.conn;
    if (this.state !== 'established') {
      if (k) this.#close(code, message); // an attempt in flight
      return this.#end(new QuicfeedError(code, message));
    }
    this.state = 'closing';
    k.closeAt = now + this.options.closeLingerMs;
    k.closeCode = code;
    k.closeMessage = message;
    for (const c of CHANNELS) this.#actions.push({ op: 'finish', channel: c });
    this.#checkCloseDone();
  }

  /**
   * The driver wrote the FIN of a channel (its stream's close completed).
   * @param {'main' | 'feed'} channel
   */
  onFinWritten(channel) {
    if (!this.conn) return;
    this.conn.finWritten[channel] = true;
    this.#checkCloseDone();
  }

  /**
   * Close at once (§9.3, immediate close): what is not yet delivered is lost.
   * @param {number} code
   * @param {string} message
   */
  abort(code, message) {
    if (this.state === 'closed') return;
    if (this.conn) this.#close(code, message);
    this.#end(new QuicfeedError(code, message));
  }

  /**
   * Give up the current connection and resume on a new one (the application asked: §12.3,
   * `SUPERSEDED`).
   */
  reconnect() {
    if (this.state !== 'established') return;
    this.#close(Reason.SUPERSEDED, 'reconnect requested');
    this.#lost(null);
  }

  /** The resume budget is spent: the session ends with HANDSHAKE_TIMEOUT, nothing sent (§12.3). */
  giveUp() {
    if (this.state !== 'resuming') return;
    if (this.conn) this.#close(Reason.HANDSHAKE_TIMEOUT, 'resume budget spent');
    this.#end(new QuicfeedError(Reason.HANDSHAKE_TIMEOUT, 'could not resume the session within the budget'));
  }

  /**
   * Something outside the protocol went wrong in the driver: end with INTERNAL_ERROR rather than
   * leave the session half-broken.
   * @param {unknown} cause
   */
  internalError(cause) {
    if (this.state === 'closed') return;
    if (this.conn) this.#close(Reason.INTERNAL_ERROR, 'internal error');
    const error = new QuicfeedError(Reason.INTERNAL_ERROR, String(cause?.message ?? cause), { cause });
    if (this.state === 'handshake') {
      this.state = 'closed';
      this.conn = null;
      this.error = error;
      return this.#actions.push({ op: 'failed', error });
    }
    this.#end(error);
  }

  // --- internals: frames --------------------------------------------------------------------

  #pump(channel, now) {
    const k = this.conn;
    try {
      while (this.conn === k && this.readable(channel)) {
        const body = k.decoders[channel].next(this.frameLimit(channel));
        if (!body) break;
        this.#onMessage(channel, decodeMessage(body), now);
      }
      if (this.conn === k && k.eof[channel] && !k.fin[channel] && this.readable(channel)) {
        // A stream that ends inside a frame: its last message is truncated (PROTOCOL.md is
        // silent; treated as MALFORMED_MESSAGE, like a body cut short).
        if (k.decoders[channel].buffered > 0) throw malformed(`${channel} stream ended inside a frame`);
        this.#onFin(channel, now);
      }
    } catch (e) {
      if (this.conn === k) this.#fail(e, now);
    }
  }

  #onMessage(channel, msg, now) {
    const k = this.conn;
    const unexpected = () => violation(Reason.UNEXPECTED_MESSAGE, `${msg.type} on ${channel} in state ${k.phase}`);
    if (k.phase === 'established') return this.#onEstablished(channel, msg, now, unexpected);
    if (msg.type === 'CONN_FAILED') return this.#refused(msg);
    switch (k.phase) {
      case 'init': // ExpectConnInitReply (§6.4)
        if (channel !== 'main' || msg.type !== 'CONN_INIT_REPLY') throw unexpected();
        this.playerId = msg.playerId;
        k.feedInit = encodeFrame({ type: 'FEED_INIT', playerId: msg.playerId, tokenA: msg.tokenA });
        this.#write('feed', concat([DECLARATION.feed], k.feedInit));
        k.feedInits = 1;
        k.retryAt = now + this.options.feedInitRetryMs;
        k.probe = { at: now };
        k.phase = 'feedInit';
        return;
      case 'feedInit': // ExpectFeedInitReply: reads main and feed
        if (channel !== 'feed' || msg.type !== 'FEED_INIT_REPLY') throw unexpected();
        // A round trip sample only if one FEED_INIT went out (a reply to a retry is ambiguous).
        if (k.feedInits === 1) this.#rttSample(now - k.probe.at);
        k.tokenB = msg.tokenB;
        k.retryAt = null;
        this.#write('main', encodeFrame({ type: 'FINAL_AUTH', tokenB: msg.tokenB }));
        k.probe = { at: now };
        k.phase = 'connOk'; // stop reading feed (§6.4)
        return;
      case 'connOk':
      case 'resume':
        if (channel !== 'main' || msg.type !== 'CONN_OK') throw unexpected();
        return this.#establish(msg, now);
    }
  }

  #refused(msg) {
    // §9.1: close with the server's reason and message.
    const error = new QuicfeedError(msg.reason, msg.message, { retryAfterMs: msg.retryAfterMs, local: false });
    const k = this.conn;
    this.#close(msg.reason, msg.message);
    if (k.kind === 'resume') return this.#end(error); // §12.3: a refused RESUME is final
    this.conn = null;
    this.state = 'closed';
    this.error = error;
    this.#actions.push({ op: 'failed', error });
  }

  #establish(msg, now) {
    const k = this.conn;
    if (msg.maxMainFrame < MIN_FRAME_LIMIT || msg.maxFeedFrame < MIN_FRAME_LIMIT) {
      throw malformed('CONN_OK announces a frame limit below 256'); // §4.2
    }
    // §5.5.6 / §11.5: the server cannot have received more than was written (0 after a first handshake).
    for (const c of CHANNELS) {
      const next = c === 'main' ? msg.mainNext : msg.feedNext;
      if (next > this.out[c].writtenNext) {
        throw violation(Reason.SEQUENCE_ERROR, `CONN_OK ${c}_next ${next}, but ${this.out[c].writtenNext} were sent`);
      }
    }
    const resumed = k.kind === 'resume';
    this.#rttSample(now - k.probe.at);
    k.probe = null;
    this.credential = msg.credential; // replaces the old one (§7.2)
    // §4.2: announced values above 16 MiB count as 16 MiB.
    this.peerLimits = { main: Math.min(msg.maxMainFrame, MAX_FRAME_LIMIT), feed: Math.min(msg.maxFeedFrame, MAX_FRAME_LIMIT) };
    k.phase = 'established';
    this.state = 'established';
    k.lastReceiveAt = now;
    // §11.5: on each channel, a GAP if needed, then every kept message, before anything else.
    for (const c of CHANNELS) {
      const plan = this.out[c].replay(c === 'main' ? msg.mainNext : msg.feedNext);
      if (plan.gap !== null) this.#write(c, encodeFrame({ type: 'GAP', next: plan.gap }));
      for (const m of plan.messages) {
        if (1 + 9 + varintSize(m.payload.length) + m.payload.length > this.peerLimits[c]) {
          // A kept message no longer fits the limit announced on this connection: stop sending
          // on that channel for this connection (§4.2, informative).
          k.blocked[c] = true;
          break;
        }
        this.#writeData(c, m.seq, m.payload, now);
        this.stats.replayed++;
      }
    }
    if (resumed) {
      this.stats.resumes++;
      this.#ack('main'); // §7.2: confirm the new credential by sending on main at once
    }
    this.#actions.push({ op: 'established', resumed });
    for (const c of CHANNELS) this.#pump(c, now);
  }

  #onEstablished(channel, msg, now, unexpected) {
    const k = this.conn;
    switch (msg.type) {
      case 'DATA': {
        if (!this.in[channel].data(msg.seq)) {
          this.stats[channel].duplicates++;
          return;
        }
        // Taken in: it is in the session's queue, which survives the connection (§11.2).
        this.queues[channel].push({ payload: msg.payload });
        this.queuedBytes[channel] += msg.payload.length;
        this.stats[channel].received++;
        this.#pendingAck(channel, 1, msg.payload.length, now);
        return;
      }
      case 'ACK':
        return this.#onAck(channel, msg.next, now);
      case 'GAP': {
        const missed = this.in[channel].gap(msg.next);
        if (missed > 0n) {
          this.queues[channel].push({ missed });
          this.stats.gaps++;
          this.stats.missed += Number(missed);
          this.#pendingAck(channel, 1, 0, now); // the next ACK covers the skipped messages
        }
        return;
      }
      case 'FEED_INIT_REPLY':
        // §6.5: late copies answering FEED_INIT retries, first handshake's connection only.
        if (channel === 'feed' && k.kind === 'first' && sameBytes(msg.tokenB, k.tokenB) && k.lateCopies < k.feedInits - 1) {
          k.lateCopies++;
          return;
        }
        throw unexpected();
      default:
        throw unexpected(); // CONN_FAILED after CONN_OK included (§9.3)
    }
  }

  #onAck(channel, next, now) {
    const k = this.conn;
    this.out[channel].ack(next);
    if (channel === 'main' && k.probe && next > k.probe.seq) {
      this.#rttSample(now - k.probe.at); // includes the server's acknowledgement delay
      k.probe = null;
    }
    if (this.state === 'closing') this.#checkCloseDone();
  }

  #onFin(channel, now) {
    const k = this.conn;
    if (k.phase !== 'established') throw violation(Reason.INVALID_STREAM, `${channel} stream finished during the handshake`); // §3.3
    // §3.3: a graceful close by the server. Everything before the FIN is in; acknowledge at once.
    k.fin[channel] = true;
    if (k.peerFinAt == null) k.peerFinAt = now;
    this.#ack(channel);
    // Otherwise wait for the server's close, which says its reason in the farewell (§14.6), at
    // most the finish grace (then the session ends as NORMAL, §3.3).
    if (this.state === 'closing') this.#checkCloseDone();
  }

  #checkCloseDone() {
    const k = this.conn;
    if (this.state !== 'closing' || !k) return;
    if (this.out.main.allAcked && this.out.feed.allAcked && k.finWritten.main && k.finWritten.feed) this.#completeClose();
  }

  #completeClose() {
    const k = this.conn;
    this.#close(k.closeCode, k.closeMessage);
    this.#end(new QuicfeedError(k.closeCode, k.closeMessage));
  }

  // --- internals: acknowledgements ----------------------------------------------------------

  #pendingAck(channel, msgs, bytes, now) {
    const a = this.conn.ack[channel];
    a.msgs += msgs;
    a.bytes += bytes;
    if (a.dueAt == null) a.dueAt = now + this.options.ackDelayMs;
    if (a.msgs >= ACK_EVERY_MESSAGES || a.bytes >= ACK_EVERY_BYTES) this.#ack(channel);
  }

  /** In-band ACK on the channel, and an acknowledgement datagram of both channels (§11.3). */
  #ack(channel) {
    const k = this.conn;
    this.#write(channel, encodeFrame({ type: 'ACK', next: this.in[channel].next }));
    // The in-band ACK may wait behind unwritten data on a blocked stream; the datagram cannot.
    if (k.datagrams) this.#actions.push({ op: 'datagram', bytes: encodeAckDatagram(this.in.main.next, this.in.feed.next) });
    k.ack[channel] = { msgs: 0, bytes: 0, dueAt: null };
  }

  #rttSample(ms) {
    if (!(ms >= 0)) return;
    this.rttMs = this.rttMs == null ? ms : this.rttMs * 0.875 + ms * 0.125;
    this.minRttMs = this.minRttMs == null ? ms : Math.min(this.minRttMs, ms);
  }

  // --- internals: outputs and outcomes ------------------------------------------------------

  #write(channel, bytes) {
    this.#actions.push({ op: 'write', channel, bytes });
  }

  #writeData(channel, seq, payload, now) {
    this.#write(channel, encodeFrame({ type: 'DATA', seq, payload }));
    this.out[channel].markWritten(seq);
    this.stats[channel].sent++;
    const k = this.conn;
    if (channel === 'main' && !k.probe) k.probe = { seq, at: now }; // one DATA→ACK sample at a time
  }

  #close(code, message) {
    this.#actions.push({ op: 'close', code, message: cutUtf8(message ?? '', MAX_FAILURE_MESSAGE) });
  }

  #fail(error, now) {
    const k = this.conn;
    if (!k) return;
    const e = error instanceof QuicfeedError && error.code !== null ? error : new QuicfeedError(Reason.INTERNAL_ERROR, String(error?.message ?? error), { cause: error });
    this.#close(e.code, e.detail);
    if (k.kind === 'first' && k.phase !== 'established') {
      this.conn = null;
      this.state = 'closed';
      this.error = e;
      return this.#actions.push({ op: 'failed', error: e });
    }
    // A violation during a resume, or after CONN_OK, ends the session (§9.2, §9.3).
    this.#end(e);
  }

  #timeout() {
    const k = this.conn;
    this.#close(Reason.HANDSHAKE_TIMEOUT, 'handshake timeout');
    const error = new QuicfeedError(Reason.HANDSHAKE_TIMEOUT, k.feedInits > 0 && k.phase === 'feedInit' ? 'no FEED_INIT_REPLY' : 'no CONN_OK in time');
    if (k.kind === 'first') {
      this.conn = null;
      this.state = 'closed';
      this.error = error;
      return this.#actions.push({ op: 'failed', error });
    }
    this.#retry(error);
  }

  #retry(error) {
    this.conn = null;
    this.state = 'resuming';
    this.#actions.push({ op: 'retry', error });
  }

  #lost(error) {
    this.conn = null;
    this.state = 'resuming';
    this.#actions.push({ op: 'lost', error });
  }

  #end(error) {
    this.conn = null;
    this.state = 'closed';
    this.error = error;
    this.#actions.push({ op: 'ended', error });
  }
}

// §9.4: closes from the peer after which the session survives.
const SURVIVING_CLOSES = new Set([Reason.SUPERSEDED, Reason.DEAD_PATH, Reason.HANDSHAKE_TIMEOUT]);
// §12.3 / §9.5: closes that end a resume attempt without ending the session.
const RETRYABLE_RESUME_CLOSES = new Set([Reason.NORMAL, Reason.SUPERSEDED, Reason.DEAD_PATH, Reason.HANDSHAKE_TIMEOUT, Reason.SERVER_BUSY]);

// ---------------------------------------------------------------------------------------------
// The WebTransport driver

const TIMEOUT = Symbol('timeout');
const SESSION_KEY = Symbol('quicfeed.session');

/** A wake-up for loops waiting on the state machine. */
class Signal {
  #promise;
  #resolve;
  constructor() {
    this.#reset();
  }
  #reset() {
    this.#promise = new Promise((r) => (this.#resolve = r));
  }
  wait() {
    return this.#promise;
  }
  fire() {
    const r = this.#resolve;
    this.#reset();
    r();
  }
}

/**
 * `serverCertificateHashes` in the forms a page has at hand: hex strings (colons allowed), bytes,
 * or WebTransport's own `{algorithm, value}` objects. Several are accepted (the server publishes
 * its current and its next certificate's hash).
 */
function certificateHashes(list) {
  if (list == null) return undefined;
  return Array.from(list, (h) => {
    const isObject = h && typeof h === 'object' && !(h instanceof ArrayBuffer) && !ArrayBuffer.isView(h);
    const raw = isObject ? h.value : h;
    const value = typeof raw === 'string' ? fromHex(raw) : copyBytes(raw, 'certificate hash');
    const algorithm = (isObject && h.algorithm) || 'sha-256';
    if (algorithm === 'sha-256' && value.length !== 32) throw new TypeError(`a SHA-256 certificate hash is 32 bytes, not ${value.length}`);
    return { algorithm, value };
  });
}

const reportError = (e) => (typeof globalThis.reportError === 'function' ? globalThis.reportError(e) : console.error(e));

/** One WebTransport connection (an attempt, then the connection that carries the session). */
class Conn {
  constructor(kind) {
    this.kind = kind;
    this.transport = null;
    this.writers = {};
    this.readers = {};
    this.pending = { main: 0, feed: 0 }; // bytes handed to a stream writer and not yet taken
    this.datagrams = null;
    this.datagramWriter = null;
    this.started = false;
    this.dead = false;
    this.closeCalled = false;
    this.closeInfo = null;
    /** @type {(outcome: object) => void} */
    this.settle = () => {};
    this.outcome = new Promise((r) => (this.settle = r));
  }
}

/** Everything behind a {@link Session}: the state machine, the current connection, the waiters. */
class Driver {
  constructor(options) {
    if (!options || !options.url) throw new TypeError('connect: options.url is required');
    const WT = options.WebTransport ?? globalThis.WebTransport;
    if (typeof WT !== 'function') throw new TypeError('WebTransport is not available here');
    this.WT = WT;
    this.url = String(options.url);
    const defined = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined));
    this.o = { ...DEFAULTS, ...defined };
    this.wtOptions = { ...(options.webTransportOptions ?? {}) };
    const hashes = certificateHashes(options.serverCertificateHashes);
    if (hashes) this.wtOptions.serverCertificateHashes = hashes;
    this.core = new SessionCore(options);
    this.now = options.now ?? (() => performance.now());
    this.random = options.random ?? Math.random;
    /** @type {Session | null} */
    this.session = null;
    /** @type {Conn | null} */
    this.conn = null;
    this.timer = null;
    this.timerAt = null;
    this.sendWaiters = { main: [], feed: [] };
    this.recvWaiters = { main: [], feed: [] };
    this.laneQueue = new Deque();
    this.laneQueuedBytes = 0;
    this.laneWaiters = [];
    this.laneOverflowed = 0;
    this.readWake = new Signal();
    this.resuming = false;
    this.flushing = false;
    this.again = false;
    this.failing = false;
    this.closedPromise = new Promise((r) => (this.resolveClosed = r));
    this.closeDetail = null;
  }

  // --- connections --------------------------------------------------------------------------

  /**
   * One connection attempt, up to CONN_OK or failure.
   * @returns {Promise<{ok?: true, error?: QuicfeedError, retry?: true, ended?: true}>}
   */
  async attempt(kind, deadline) {
    const conn = new Conn(kind);
    this.conn = conn;
    let expiry;
    const expired = new Promise((r) => (expiry = setTimeout(r, Math.max(0, deadline - this.now()), TIMEOUT)));
    const within = async (promise) => {
      promise.catch(() => {}); // it may lose the race and reject later
      const v = await Promise.race([promise, expired]);
      if (v === TIMEOUT) throw TIMEOUT;
      if (conn.dead || this.conn !== conn) throw new Error('connection closed');
      return v;
    };
    try {
      const wt = new this.WT(this.url, this.wtOptions);
      conn.transport = wt;
      wt.closed.then(
        (info) => this.onTransportClosed(conn, info ?? {}),
        () => this.onTransportClosed(conn, null),
      );
      await within(wt.ready);
      // main first, then feed (each a WebTransport bidirectional stream).
      const main = await within(wt.createBidirectionalStream());
      const feed = await within(wt.createBidirectionalStream());
      for (const [c, s] of [['main', main], ['feed', feed]]) {
        conn.writers[c] = s.writable.getWriter();
        conn.readers[c] = s.readable.getReader();
      }
      this.setUpDatagrams(conn, wt);
      this.farewellLoop(conn, wt);
      const proof = kind === 'resume' ? await within(webTransportResumeProof(this.core.credential, this.core.playerId)) : null;
      const now = this.now();
      if (now >= deadline) throw TIMEOUT;
      conn.started = true;
      const transport = { datagrams: !!conn.datagramWriter };
      if (kind === 'first') this.core.startFirst(now, deadline, transport);
      else this.core.startResume(proof, now, deadline, transport);
      for (const c of CHANNELS) this.readLoop(conn, c);
      this.flush();
    } catch (e) {
      clearTimeout(expiry);
      if (this.conn === conn) {
        this.conn = null;
        this.closeTransport(conn, Reason.HANDSHAKE_TIMEOUT, 'connection attempt abandoned');
      }
      if (this.core.state === 'closed') return { ended: true };
      if (kind === 'resume') return { retry: true };
      this.core.state = 'closed';
      return {
        error:
          e === TIMEOUT
            ? new QuicfeedError(Reason.HANDSHAKE_TIMEOUT, 'no WebTransport session in time')
            : localError('TRANSPORT_ERROR', `cannot open a WebTransport session: ${e?.message ?? e}`, e),
      };
    }
    const outcome = await conn.outcome;
    clearTimeout(expiry);
    return outcome;
  }

  setUpDatagrams(conn, wt) {
    const dg = wt.datagrams;
    if (!dg) return;
    conn.datagrams = dg;
    try {
      // Room for a burst while the page is busy; a read is kept pending at all times anyway.
      if ('incomingHighWaterMark' in dg) dg.incomingHighWaterMark = 16;
    } catch {}
    try {
      const writable = dg.writable ?? dg.createWritable?.();
      conn.datagramWriter = writable ? writable.getWriter() : null;
    } catch {
      conn.datagramWriter = null;
    }
    if (dg.readable) this.datagramLoop(conn, dg.readable.getReader());
  }

  /**
   * The server's farewell (§14.6): a page cannot read a QUIC close code, so a server that closes
   * the connection first sends the reason as one `CONN_FAILED` on a unidirectional stream. It
   * counts as the close with that code, arriving before the close itself.
   */
  async farewellLoop(conn, wt) {
    const incoming = wt.incomingUnidirectionalStreams;
    if (!incoming) return;
    const streams = incoming.getReader();
    try {
      for (;;) {
        const { value: stream, done } = await streams.read();
        if (done) return;
        this.readFarewell(conn, stream).catch(() => {}); // a broken farewell is no farewell
      }
    } catch {
      // the transport's `closed` reports the end
    }
  }

  async readFarewell(conn, stream) {
    const reader = stream.getReader();
    const frames = new FrameDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      frames.push(value instanceof Uint8Array ? value : new Uint8Array(value));
      if (frames.buffered > 4 + HANDSHAKE_FRAME_LIMIT) return reader.cancel();
      const body = frames.next(HANDSHAKE_FRAME_LIMIT);
      if (!body) continue;
      const msg = decodeMessage(body);
      reader.cancel().catch(() => {});
      if (msg.type !== 'CONN_FAILED' || this.conn !== conn || !conn.started) return;
      const info = { closeCode: msg.reason, reason: msg.message };
      conn.closeInfo = info;
      conn.dead = true;
      this.core.connectionLost(this.now(), info);
      this.flush();
      return;
    }
  }

  async readLoop(conn, channel) {
    const reader = conn.readers[channel];
    try {
      for (;;) {
        while (this.conn === conn && !this.core.wantsData(channel)) await this.readWake.wait();
        if (this.conn !== conn) return;
        const { value, done } = await reader.read();
        if (this.conn !== conn) return;
        if (done) this.core.onStreamEnd(channel, this.now());
        else this.core.onStreamData(channel, value instanceof Uint8Array ? value : new Uint8Array(value), this.now());
        this.flush();
        if (done) return;
      }
    } catch (e) {
      this.onStreamFailure(conn, channel, e);
    }
  }

  async datagramLoop(conn, reader) {
    try {
      for (;;) {
        const { value, done } = await reader.read(); // always one read pending
        if (done || this.conn !== conn) return;
        this.core.onDatagram(value instanceof Uint8Array ? value : new Uint8Array(value), this.now());
        this.flush();
      }
    } catch {
      // the transport's `closed` reports the loss
    }
  }

  onStreamFailure(conn, channel, e) {
    if (this.conn !== conn || !conn.started) return;
    if (e?.source === 'stream') {
      // RESET_STREAM or STOP_SENDING from the server (§3.3).
      this.core.onStreamReset(channel, this.now());
      this.flush();
      return;
    }
    // The session itself failed: `closed` settles with the details; wait a moment for it.
    setTimeout(() => {
      if (this.conn !== conn) return;
      this.core.connectionLost(this.now(), conn.closeInfo);
      this.flush();
    }, 250);
  }

  onTransportClosed(conn, info) {
    conn.closeInfo = info;
    if (this.conn !== conn) return;
    conn.dead = true; // before start: the attempt's pending steps fail
    if (!conn.started) return;
    this.core.connectionLost(this.now(), info);
    this.flush();
  }

  write(conn, channel, bytes) {
    if (conn.dead) return;
    conn.pending[channel] += bytes.length;
    conn.writers[channel].write(bytes).then(
      () => {
        conn.pending[channel] -= bytes.length;
        if (this.sendWaiters[channel].length) this.flush();
      },
      (e) => {
        conn.pending[channel] -= bytes.length;
        this.onStreamFailure(conn, channel, e);
      },
    );
  }

  sendDatagram(conn, bytes) {
    if (conn.dead || !conn.datagramWriter) return;
    conn.datagramWriter.write(bytes).catch(() => {}); // unreliable by design; never awaited
  }

  finish(conn, channel) {
    if (conn.dead) return;
    conn.writers[channel].close().then(
      () => {
        if (this.conn !== conn) return;
        this.core.onFinWritten(channel);
        this.flush();
      },
      (e) => this.onStreamFailure(conn, channel, e),
    );
  }

  closeTransport(conn, code, message) {
    conn.dead = true;
    if (conn.closeCalled || conn.closeInfo !== null) return; // once, and not after it closed
    conn.closeCalled = true;
    try {
      // The WebTransport close code carries the §9.5 reason code.
      conn.transport?.close({ closeCode: code, reason: message ?? '' });
    } catch {}
  }

  detach() {
    const conn = this.conn;
    this.conn = null;
    if (conn && !conn.dead) this.closeTransport(conn, Reason.SUPERSEDED, 'connection given up');
    this.readWake.fire();
  }

  // --- the action loop ----------------------------------------------------------------------

  flush() {
    if (this.flushing) {
      this.again = true;
      return;
    }
    this.flushing = true;
    try {
      do {
        this.again = false;
        this.processActions();
        this.drainSends();
        this.wakeRecv();
      } while (this.again || this.core.hasActions);
      this.readWake.fire();
      this.schedule();
    } catch (e) {
      // A bug here must not leave the session half-broken: end it cleanly.
      this.flushing = false;
      if (this.failing) throw e;
      this.failing = true;
      this.core.internalError(e);
      this.flush();
      return;
    } finally {
      this.flushing = false;
    }
  }

  processActions() {
    for (const a of this.core.takeActions()) {
      const conn = this.conn;
      switch (a.op) {
        case 'write':
          if (conn) this.write(conn, a.channel, a.bytes);
          break;
        case 'datagram':
          if (conn) this.sendDatagram(conn, a.bytes);
          break;
        case 'finish':
          if (conn) this.finish(conn, a.channel);
          break;
        case 'close':
          if (conn) this.closeTransport(conn, a.code, a.message);
          break;
        case 'established':
          conn?.settle({ ok: true });
          break;
        case 'failed':
          this.detach();
          conn?.settle({ error: a.error });
          break;
        case 'retry':
          this.detach();
          conn?.settle({ retry: true, error: a.error });
          break;
        case 'lost':
          this.detach();
          this.startResuming();
          break;
        case 'ended':
          this.detach();
          conn?.settle({ ended: true });
          this.finishSession(a.error);
          break;
        case 'lane':
          this.deliverLane(a.payload, a.seq);
          break;
      }
    }
  }

  schedule() {
    const at = this.core.state === 'closed' ? null : this.core.nextTimer();
    if (at === this.timerAt) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.timerAt = at;
    if (at == null) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.timerAt = null;
      this.core.onTimer(this.now());
      this.flush();
    }, Math.max(0, Math.ceil(at - this.now())));
  }

  // --- resuming (§12.3) ---------------------------------------------------------------------

  startResuming() {
    if (this.resuming) return;
    this.resuming = true;
    this.resumeLoop()
      .catch((e) => {
        this.core.internalError(e);
        this.flush();
      })
      .finally(() => (this.resuming = false));
  }

  async resumeLoop() {
    while (this.core.state === 'resuming') {
      this.emit('resuming', {});
      const policy = new ResumePolicy(
        {
          budgetMs: this.o.resumeBudgetMs,
          attemptTimeoutMs: this.o.resumeAttemptTimeoutMs,
          backoffMs: this.o.resumeBackoffMs,
          backoffMaxMs: this.o.resumeBackoffMaxMs,
          random: this.random,
        },
        this.now(),
      );
      for (let attempts = 1; ; attempts++) {
        const result = await this.attempt('resume', policy.attemptDeadline(this.now()));
        if (result.ok) {
          this.emit('resumed', { attempts });
          break;
        }
        if (this.core.state !== 'resuming') return;
        const delay = policy.nextDelay(this.now());
        if (delay === null) {
          this.core.giveUp();
          this.flush();
          return;
        }
        let wait;
        await Promise.race([new Promise((r) => (wait = setTimeout(r, delay))), this.closedPromise]);
        clearTimeout(wait);
        if (this.core.state !== 'resuming') return;
      }
    }
  }

  // --- application side ---------------------------------------------------------------------

  enqueueSend(channel, payload) {
    const state = this.core.state;
    if (state !== 'established' && state !== 'resuming') return Promise.reject(this.closedError());
    const max = this.core.maxPayload(channel);
    if (payload.length > max) return Promise.reject(localError('TOO_LARGE', `${payload.length} bytes on ${channel}, at most ${max}`));
    return new Promise((resolve, reject) => {
      this.sendWaiters[channel].push({ payload, resolve, reject });
      this.flush();
    });
  }

  closedError() {
    const e = this.core.error;
    return localError('CLOSED', e ? `the session has ended (${e.reason})` : `the session is ${this.core.state}`, e ?? undefined);
  }

  /** Sends wait, in order, while the stream's unwritten bytes exceed the send buffer (§11.4). */
  drainSends() {
    for (const c of CHANNELS) {
      const q = this.sendWaiters[c];
      while (q.length) {
        const state = this.core.state;
        if (state !== 'established' && state !== 'resuming') {
          const error = this.closedError();
          for (const w of q.splice(0)) w.reject(error);
          break;
        }
        // Without a connection a send never waits: it is numbered and kept for the replay.
        if (state === 'established' && this.conn && this.conn.pending[c] >= this.o.sendBufferBytes) break;
        const w = q.shift();
        try {
          this.core.send(c, w.payload, this.now());
          w.resolve();
        } catch (e) {
          w.reject(e);
        }
      }
    }
  }

  recv(channel) {
    return new Promise((resolve, reject) => {
      this.recvWaiters[channel].push({ resolve, reject });
      this.flush();
    });
  }

  wakeRecv() {
    for (const c of CHANNELS) {
      const waiters = this.recvWaiters[c];
      while (waiters.length) {
        const item = this.core.popReceived(c, this.now());
        if (!item) {
          // Queued messages are handed out first; then the end is reported (§11.6).
          if (this.core.state === 'closed') for (const w of waiters.splice(0)) w.reject(this.core.error);
          break;
        }
        if (item.missed !== undefined) {
          this.emit('gap', { channel: c, missed: item.missed });
          continue;
        }
        waiters.shift().resolve(item.payload);
      }
    }
  }

  laneSend(payload) {
    const size = this.conn?.datagrams?.maxDatagramSize;
    const seq = this.core.laneSend(payload, this.now(), typeof size === 'number' ? size : null);
    this.flush();
    return seq !== null;
  }

  deliverLane(payload, seq) {
    const handler = this.session?.lane.onmessage;
    if (typeof handler === 'function') {
      queueMicrotask(() => {
        try {
          handler(payload, seq);
        } catch (e) {
          reportError(e);
        }
      });
      return;
    }
    if (this.laneWaiters.length) return this.laneWaiters.shift().resolve({ payload, seq });
    // Bounded: the oldest gives way (§13.5, informative).
    this.laneQueue.push({ payload, seq });
    this.laneQueuedBytes += payload.length;
    while (this.laneQueuedBytes > this.o.laneReceiveBufferBytes && this.laneQueue.length > 1) {
      this.laneQueuedBytes -= this.laneQueue.shift().payload.length;
      this.laneOverflowed++;
    }
  }

  laneRecv() {
    const item = this.laneQueue.shift();
    if (item) {
      this.laneQueuedBytes -= item.payload.length;
      return Promise.resolve(item);
    }
    if (this.core.state === 'closed') return Promise.resolve(null);
    return new Promise((resolve) => this.laneWaiters.push({ resolve }));
  }

  close({ code = Reason.NORMAL, message = '', graceful = true } = {}) {
    if (!Number.isInteger(code) || code < 0 || code > 0xffff) throw new RangeError('close code must be a u16 reason code');
    if (graceful) this.core.beginClose(code, String(message), this.now());
    else this.core.abort(code, String(message));
    this.flush();
    return this.closedPromise;
  }

  finishSession(error) {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.timerAt = null;
    for (const w of this.laneWaiters.splice(0)) w.resolve(null);
    const detail = { code: error.code, reason: error.reason, message: error.detail, local: error.local, error };
    this.closeDetail = detail;
    this.emit('closed', detail);
    this.resolveClosed(detail);
  }

  emit(type, detail) {
    const target = this.session;
    if (!target) return;
    queueMicrotask(() => target.dispatchEvent(new CustomEvent(type, { detail })));
  }

  stats() {
    const s = structuredClone(this.core.stats);
    for (const c of CHANNELS) {
      s[c].queued = this.core.queues[c].length;
      s[c].unacknowledged = this.core.out[c].kept.length;
      s[c].overflowed = this.core.out[c].overflowed;
    }
    s.lane.overflowed = this.laneOverflowed;
    return s;
  }
}

/**
 * One reliable channel of a session, `main` or `feed` (§11): messages are delivered exactly
 * once and in order across resumes, except those a `gap` event reports lost.
 */
export class Channel {
  #d;
  #name;
  /** @param {Driver} driver @param {'main' | 'feed'} name */
  constructor(key, driver, name) {
    if (key !== SESSION_KEY) throw new TypeError('Channel is not constructible; use connect()');
    this.#d = driver;
    this.#name = name;
  }

  /** `'main'` or `'feed'`. */
  get name() {
    return this.#name;
  }

  /** Largest payload `send` accepts, under the server's frame limit for this channel. */
  get maxPayload() {
    return this.#d.core.maxPayload(this.#name);
  }

  /**
   * Send a message. Resolves once it is numbered and queued (kept for replay until
   * acknowledged); waits while the stream already has a send buffer's worth unwritten. While the
   * session resumes it resolves at once: the message goes out in the replay. Rejects with
   * `TOO_LARGE` or `CLOSED`.
   * @param {Uint8Array | ArrayBuffer | ArrayBufferView} bytes copied
   * @returns {Promise<void>}
   */
  send(bytes) {
    let payload;
    try {
      payload = copyBytes(bytes);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#d.enqueueSend(this.#name, payload);
  }

  /**
   * Send a value as JSON (UTF-8).
   * @param {unknown} value
   * @returns {Promise<void>}
   */
  sendJson(value) {
    let payload;
    try {
      payload = textEncoder.encode(JSON.stringify(value));
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#d.enqueueSend(this.#name, payload);
  }

  /**
   * The next message, in order. After the session ends, the messages already received are
   * still handed out; then it rejects with the session's ending (a `QuicfeedError`, `NORMAL` for
   * a graceful close).
   * @returns {Promise<Uint8Array>}
   */
  recv() {
    return this.#d.recv(this.#name);
  }

  /**
   * The next message, parsed as JSON. A payload that is not JSON rejects with `DECODE_ERROR`;
   * the message is consumed and the session carries on.
   * @returns {Promise<any>}
   */
  async recvJson() {
    const bytes = await this.recv();
    try {
      return JSON.parse(strictUtf8.decode(bytes));
    } catch (e) {
      throw localError('DECODE_ERROR', `a ${this.#name} message is not JSON: ${e.message}`, e);
    }
  }

  /**
   * Messages until the session ends: the iteration ends after a `NORMAL` ending, and throws any
   * other.
   * @returns {AsyncGenerator<Uint8Array>}
   */
  async *[Symbol.asyncIterator]() {
    for (;;) {
      let m;
      try {
        m = await this.recv();
      } catch (e) {
        if (e?.code === Reason.NORMAL) return;
        throw e;
      }
      yield m;
    }
  }

  /**
   * Like iterating the channel, with each message parsed as JSON.
   * @returns {AsyncGenerator<any>}
   */
  async *json() {
    for (;;) {
      let v;
      try {
        v = await this.recvJson();
      } catch (e) {
        if (e?.code === Reason.NORMAL) return;
        throw e;
      }
      yield v;
    }
  }
}

/**
 * The feed datagram lane (§13): unreliable, newest wins. Incoming messages go to `onmessage` if
 * it is set, else to a bounded queue read by `recv()` or iteration.
 */
export class Lane {
  #d;
  constructor(key, driver) {
    if (key !== SESSION_KEY) throw new TypeError('Lane is not constructible; use connect()');
    this.#d = driver;
    /** @type {((payload: Uint8Array, seq: bigint) => void) | null} */
    this.onmessage = null;
  }

  /**
   * Largest lane payload the current path takes (WebTransport's `maxDatagramSize` less the
   * largest header, 19 bytes), or null without a connection.
   * @returns {number | null}
   */
  get maxPayload() {
    const size = this.#d.conn?.datagrams?.maxDatagramSize;
    return typeof size === 'number' ? Math.max(0, size - 19) : null;
  }

  /**
   * Send a lane message now. Returns false if it was dropped (no established connection: lane
   * messages are never queued or replayed). Throws `TOO_LARGE` if the datagram would exceed
   * `maxDatagramSize`.
   * @param {Uint8Array | ArrayBuffer | ArrayBufferView} bytes
   * @returns {boolean}
   */
  send(bytes) {
    return this.#d.laneSend(copyBytes(bytes));
  }

  /**
   * Send a value as JSON on the lane.
   * @param {unknown} value
   * @returns {boolean}
   */
  sendJson(value) {
    return this.#d.laneSend(textEncoder.encode(JSON.stringify(value)));
  }

  /**
   * The next lane message, or null once the session has ended.
   * @returns {Promise<{payload: Uint8Array, seq: bigint} | null>}
   */
  recv() {
    return this.#d.laneRecv();
  }

  /**
   * Lane messages until the session ends.
   * @returns {AsyncGenerator<{payload: Uint8Array, seq: bigint}>}
   */
  async *[Symbol.asyncIterator]() {
    for (;;) {
      const m = await this.recv();
      if (!m) return;
      yield m;
    }
  }
}

/**
 * A quicfeed session over WebTransport. An `EventTarget`; its events are `CustomEvent`s:
 * - `resuming`: the connection was lost; the session is being resumed (§12.3);
 * - `resumed` (`detail.attempts`): it continues on a new connection;
 * - `gap` (`detail.channel`, `detail.missed` as a bigint): messages lost in an outage longer
 *   than the server's replay buffer, reported in order, just before the next message is read;
 * - `closed` (`detail.code`, `detail.reason`, `detail.message`, `detail.local`,
 *   `detail.error`): the session has ended.
 */
export class Session extends EventTarget {
  #d;
  constructor(key, driver) {
    if (key !== SESSION_KEY) throw new TypeError('Session is not constructible; use connect()');
    super();
    this.#d = driver;
    /** The reliable control channel. */
    this.main = new Channel(SESSION_KEY, driver, 'main');
    /** The reliable feed channel. */
    this.feed = new Channel(SESSION_KEY, driver, 'feed');
    /** The feed datagram lane. */
    this.lane = new Lane(SESSION_KEY, driver);
  }

  /** The player ID the server assigned (u64). @returns {bigint} */
  get playerId() {
    return this.#d.core.playerId;
  }

  /**
   * Smoothed round trip on main in ms, from the handshake and DATA→ACK samples (the latter
   * include the server's acknowledgement delay, up to about 112 ms), or null.
   * @returns {number | null}
   */
  get rttMs() {
    return this.#d.core.rttMs;
  }

  /** Smallest round trip sample in ms, or null. @returns {number | null} */
  get minRttMs() {
    return this.#d.core.minRttMs;
  }

  /** @returns {'connected' | 'resuming' | 'closing' | 'closed'} */
  get state() {
    const s = this.#d.core.state;
    return s === 'established' ? 'connected' : s === 'resuming' || s === 'closing' || s === 'closed' ? s : 'closed';
  }

  /** Counters: resumes, replayed messages, gaps, per-channel and lane traffic (a snapshot). */
  get stats() {
    return this.#d.stats();
  }

  /** Resolves with the `closed` event's detail when the session ends. @returns {Promise<CloseDetail>} */
  get closed() {
    return this.#d.closedPromise;
  }

  /**
   * End the session. Graceful by default (§9.3): no new sends, both streams finished, then the
   * close once the server has acknowledged everything (at most 2 s). `graceful: false` closes
   * at once. Without a connection (while resuming) the session ends locally and nothing is sent.
   * @param {{code?: number, message?: string, graceful?: boolean}} [options]
   * @returns {Promise<CloseDetail>}
   */
  close(options) {
    return this.#d.close(options);
  }

  /**
   * For demos and tests: give up the current WebTransport connection (closed with
   * `SUPERSEDED`) without ending the session, which then resumes on a new one.
   */
  dropConnection() {
    this.#d.core.reconnect();
    this.#d.flush();
  }
}

/**
 * @typedef {{code: number | null, reason: string, message: string, local: boolean, error: QuicfeedError}} CloseDetail
 */

/**
 * Open a session: a WebTransport session to `url`, then the first handshake (§6.1). Resolves
 * once `CONN_OK` has arrived; rejects with a {@link QuicfeedError} (a server's refusal keeps its
 * reason code, message and `retryAfterMs`).
 *
 * @param {object} options
 * @param {string} options.url `https://HOST:PORT/PATH` (the server's default path is `/quicfeed`)
 * @param {Iterable<string | Uint8Array | ArrayBuffer | {algorithm?: string, value: string | BufferSource}>} [options.serverCertificateHashes]
 *   SHA-256 hashes of acceptable server certificates (hex or bytes), for development servers
 * @param {Uint8Array | ArrayBuffer | string} [options.credentials] CONN_INIT credentials; a string is UTF-8 encoded
 * @param {number} [options.resumeBudgetMs] default 10000 (as the native client; within the server's default grace period of 15 s)
 * @param {number} [options.resumeAttemptTimeoutMs] default 2000
 * @param {number} [options.resumeBackoffMs] default 250, doubled per failed attempt
 * @param {number} [options.resumeBackoffMaxMs] default 2000
 * @param {number} [options.handshakeTimeoutMs] default 10000 (first handshake, WebTransport setup included)
 * @param {number} [options.maxMainFrame] own frame limits, default 65536
 * @param {number} [options.maxFeedFrame]
 * @param {number} [options.feedInitRetryMs] default 1000
 * @param {number} [options.feedInitAttempts] default 3, at most 8
 * @param {number} [options.sendBufferBytes] default 65536
 * @param {number} [options.receiveBufferBytes] default 65536
 * @param {number} [options.replayBufferBytes] default 131072
 * @param {number} [options.laneReceiveBufferBytes] default 65536
 * @param {number | null} [options.laneMaxAgeMs] drop lane messages older than this (§13.4); default none
 * @param {number} [options.livenessTimeoutMs] resume when nothing at all arrived for this long
 *   (0, the default: rely on the browser's idle timeout; use only with a server that sends regularly)
 * @param {WebTransportOptions} [options.webTransportOptions] passed to the WebTransport constructor
 * @param {typeof WebTransport} [options.WebTransport] the constructor (default: the browser's)
 * @returns {Promise<Session>}
 */
export async function connect(options) {
  const driver = new Driver(options);
  const session = new Session(SESSION_KEY, driver);
  driver.session = session;
  const result = await driver.attempt('first', driver.now() + driver.o.handshakeTimeoutMs);
  if (!result.ok) throw result.error ?? driver.core.error ?? localError('TRANSPORT_ERROR', 'the handshake did not complete');
  return session;
}
