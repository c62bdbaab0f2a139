// Type declarations for quicfeed.js, the browser client of quicfeed over WebTransport.

/** A reason code name of PROTOCOL.md §9.5. */
export type ReasonName =
  | 'NORMAL' | 'UNEXPECTED_MESSAGE' | 'MALFORMED_MESSAGE' | 'UNKNOWN_MESSAGE' | 'FRAME_TOO_LARGE'
  | 'INVALID_STREAM' | 'INVALID_TOKEN' | 'TOKEN_EXPIRED' | 'TOKEN_REUSED' | 'PLAYER_MISMATCH'
  | 'HANDSHAKE_TIMEOUT' | 'AUTH_REFUSED' | 'SERVER_FULL' | 'PLAYER_ID_IN_USE' | 'SERVER_SHUTDOWN'
  | 'INTERNAL_ERROR' | 'SUPERSEDED' | 'UNKNOWN_SESSION' | 'DEAD_PATH' | 'SESSION_EXPIRED'
  | 'SEQUENCE_ERROR' | 'SERVER_BUSY' | 'ADDRESS_FULL';

/** Reason codes (§9.5). */
export declare const Reason: Readonly<Record<ReasonName, number>>;

/** Message tags (§5.5). */
export declare const Tag: Readonly<{
  CONN_INIT: 0; CONN_INIT_REPLY: 1; FEED_INIT: 2; FEED_INIT_REPLY: 3; FINAL_AUTH: 4; CONN_OK: 5;
  CONN_FAILED: 6; DATA: 7; ACK: 8; RESUME: 9; GAP: 10;
}>;

export declare const PROTOCOL_VERSION: 'quicfeed/1';
export declare const HANDSHAKE_FRAME_LIMIT: 4096;
export declare const MAX_FRAME_LIMIT: 16777216;
export declare const MIN_FRAME_LIMIT: 256;
export declare const MAX_FEED_INITS: 8;
export declare const MAX_CREDENTIALS: 4082;

/**
 * The name of a reason code: its §9.5 name, `APPLICATION_0x….` for 0x1000..=0xffff,
 * `RESERVED_0x….` for codes of later versions, `TRANSPORT_ERROR` for null.
 */
export declare function reasonName(code: number | null | undefined): string;

/** Every failure the module reports. */
export declare class QuicfeedError extends Error {
  constructor(code: number | null, detail?: string, extra?: { reason?: string; retryAfterMs?: number | null; local?: boolean; cause?: unknown });
  readonly name: 'QuicfeedError';
  /** The §9.5 reason code, or null when there is none (transport failure, local refusal). */
  readonly code: number | null;
  /** The reason's name, or a local condition: `TRANSPORT_ERROR`, `TOO_LARGE`, `CLOSED`, `DECODE_ERROR`. */
  readonly reason: string;
  /** Human-readable detail (a server's `CONN_FAILED` message, for instance). */
  readonly detail: string;
  /** The server's retry hint (`CONN_FAILED`), if any. */
  readonly retryAfterMs: number | null;
  /** False when the server sent the reason. */
  readonly local: boolean;
}

/** What a `closed` event carries, and what `Session.closed` resolves with. */
export interface CloseDetail {
  code: number | null;
  reason: string;
  message: string;
  local: boolean;
  error: QuicfeedError;
}

/** A SHA-256 certificate hash: hex (colons allowed), bytes, or WebTransport's own form. */
export type CertificateHash = string | BufferSource | { algorithm?: string; value: string | BufferSource };

export interface ConnectOptions {
  /** `https://HOST:PORT/PATH`; the server's default path is `/quicfeed`. */
  url: string | URL;
  /** Acceptable server certificates, for development servers (current and next). */
  serverCertificateHashes?: Iterable<CertificateHash>;
  /** `CONN_INIT` credentials; a string is UTF-8 encoded. At most 4082 bytes. */
  credentials?: BufferSource | string;
  /** Total time to resume after a loss (default 10000, as the native client; keep it within the server's grace period, 15 s by default). */
  resumeBudgetMs?: number;
  /** Deadline of one resume attempt, WebTransport setup included (default 2000). */
  resumeAttemptTimeoutMs?: number;
  /** First backoff between resume attempts, doubled per failure, jittered ×0.5..1.5 (default 250). */
  resumeBackoffMs?: number;
  /** Backoff cap (default 2000). */
  resumeBackoffMaxMs?: number;
  /** Deadline of the first handshake, WebTransport setup included (default 10000). */
  handshakeTimeoutMs?: number;
  /** Own frame limits announced to the server, 256..=16777216 (default 65536). */
  maxMainFrame?: number;
  maxFeedFrame?: number;
  /** FEED_INIT retry timer (default 1000) and attempts (default 3, at most 8). */
  feedInitRetryMs?: number;
  feedInitAttempts?: number;
  /** Acknowledgement delay (default 112.5). */
  ackDelayMs?: number;
  /** Unwritten bytes per stream beyond which `send` waits (default 65536). */
  sendBufferBytes?: number;
  /** Received bytes per channel beyond which its stream is no longer read (default 65536). */
  receiveBufferBytes?: number;
  /** Unacknowledged payload kept per channel for replays (default 131072). */
  replayBufferBytes?: number;
  /** Lane messages kept for `recv()` (default 65536 bytes; the oldest give way). */
  laneReceiveBufferBytes?: number;
  /** Drop lane messages older than this on arrival (§13.4); default none. */
  laneMaxAgeMs?: number | null;
  /** Resume when nothing at all arrived for this long; 0 (default) relies on the browser. */
  livenessTimeoutMs?: number;
  /** Passed to the WebTransport constructor. */
  webTransportOptions?: WebTransportOptions;
  /** The WebTransport constructor (default: the browser's), for tests. */
  WebTransport?: new (url: string, options?: WebTransportOptions) => WebTransport;
  /** Clock in ms (default `performance.now`), for tests. */
  now?: () => number;
  /** Random source for the backoff jitter (default `Math.random`). */
  random?: () => number;
}

/** A reliable channel, `main` or `feed`: exactly once and in order, across resumes. */
export declare class Channel implements AsyncIterable<Uint8Array> {
  private constructor();
  readonly name: 'main' | 'feed';
  /** Largest payload `send` accepts (under the server's frame limit). */
  readonly maxPayload: number;
  /** Resolves once numbered and queued; waits while a send buffer's worth is unwritten. */
  send(bytes: BufferSource): Promise<void>;
  /** `JSON.stringify`, UTF-8. */
  sendJson(value: unknown): Promise<void>;
  /** The next message; after the end, rejects with the session's ending (NORMAL if graceful). */
  recv(): Promise<Uint8Array>;
  /** The next message as JSON; a non-JSON payload rejects with `DECODE_ERROR` and is consumed. */
  recvJson<T = any>(): Promise<T>;
  /** Messages until the session ends (normally: the iteration ends; otherwise it throws). */
  [Symbol.asyncIterator](): AsyncGenerator<Uint8Array>;
  /** Like iteration, each message parsed as JSON. */
  json<T = any>(): AsyncGenerator<T>;
}

export interface LaneMessage {
  payload: Uint8Array;
  seq: bigint;
}

/** The feed datagram lane: unreliable, newest wins. */
export declare class Lane implements AsyncIterable<LaneMessage> {
  private constructor();
  /** Called for each delivered lane message; when null, messages queue for `recv()`. */
  onmessage: ((payload: Uint8Array, seq: bigint) => void) | null;
  /** Largest payload the current path takes, or null without a connection. */
  readonly maxPayload: number | null;
  /** Send now; false if dropped (no connection). Throws `TOO_LARGE` above `maxDatagramSize`. */
  send(bytes: BufferSource): boolean;
  sendJson(value: unknown): boolean;
  /** The next queued message, or null once the session has ended. */
  recv(): Promise<LaneMessage | null>;
  [Symbol.asyncIterator](): AsyncGenerator<LaneMessage>;
}

export interface SessionStats {
  resumes: number;
  resumeAttempts: number;
  replayed: number;
  gaps: number;
  missed: number;
  datagramsIgnored: number;
  main: ChannelStats;
  feed: ChannelStats;
  lane: { sent: number; received: number; dropped: number; stale: number; tooOld: number; overflowed: number };
}

export interface ChannelStats {
  sent: number;
  received: number;
  duplicates: number;
  queued: number;
  unacknowledged: number;
  overflowed: number;
}

export interface SessionEventMap {
  resuming: CustomEvent<{}>;
  resumed: CustomEvent<{ attempts: number }>;
  gap: CustomEvent<{ channel: 'main' | 'feed'; missed: bigint }>;
  closed: CustomEvent<CloseDetail>;
}

/** A quicfeed session over WebTransport. */
export declare class Session extends EventTarget {
  private constructor();
  readonly main: Channel;
  readonly feed: Channel;
  readonly lane: Lane;
  readonly playerId: bigint;
  /** Smoothed main round trip (handshake and DATA→ACK samples, the latter with the server's ack delay). */
  readonly rttMs: number | null;
  readonly minRttMs: number | null;
  readonly state: 'connected' | 'resuming' | 'closing' | 'closed';
  readonly stats: SessionStats;
  readonly closed: Promise<CloseDetail>;
  /** Graceful by default (§9.3); `graceful: false` closes at once. */
  close(options?: { code?: number; message?: string; graceful?: boolean }): Promise<CloseDetail>;
  /** Give up the current connection (closed with SUPERSEDED) and resume on a new one. */
  dropConnection(): void;
  addEventListener<K extends keyof SessionEventMap>(type: K, listener: (this: Session, ev: SessionEventMap[K]) => any, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
  removeEventListener<K extends keyof SessionEventMap>(type: K, listener: (this: Session, ev: SessionEventMap[K]) => any, options?: boolean | EventListenerOptions): void;
  removeEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | EventListenerOptions): void;
}

/** Open a WebTransport session and run the first handshake; resolves after CONN_OK. */
export declare function connect(options: ConnectOptions): Promise<Session>;

// --- codec --------------------------------------------------------------------------------------

export type Message =
  | { type: 'CONN_INIT'; maxMainFrame: number; maxFeedFrame: number; credentials: Uint8Array }
  | { type: 'CONN_INIT_REPLY'; playerId: bigint; tokenA: Uint8Array }
  | { type: 'FEED_INIT'; playerId: bigint; tokenA: Uint8Array }
  | { type: 'FEED_INIT_REPLY'; tokenB: Uint8Array }
  | { type: 'FINAL_AUTH'; tokenB: Uint8Array }
  | { type: 'CONN_OK'; maxMainFrame: number; maxFeedFrame: number; credential: Uint8Array; mainNext: bigint; feedNext: bigint }
  | { type: 'CONN_FAILED'; reason: number; message: string; retryAfterMs: number | null }
  | { type: 'DATA'; seq: bigint; payload: Uint8Array }
  | { type: 'ACK'; next: bigint }
  | { type: 'RESUME'; playerId: bigint; proof: Uint8Array; maxMainFrame: number; maxFeedFrame: number; mainNext: bigint; feedNext: bigint }
  | { type: 'GAP'; next: bigint };

export type Datagram =
  | { kind: 'lane'; seq: bigint; sentMs: bigint; payload: Uint8Array }
  | { kind: 'ack'; mainNext: bigint; feedNext: bigint };

export declare function varintSize(value: bigint | number): 1 | 3 | 5 | 9;
export declare function encodeMessage(msg: Message): Uint8Array;
export declare function encodeFrame(msg: Message): Uint8Array;
export declare function decodeMessage(body: Uint8Array): Message;
export declare function decodeFrame(frame: Uint8Array, limit?: number): Message;
export declare class FrameDecoder {
  push(chunk: Uint8Array): void;
  readonly buffered: number;
  next(limit: number): Uint8Array | null;
}
export declare function encodeLaneDatagram(seq: bigint | number, sentMs: bigint | number, payload: Uint8Array): Uint8Array;
export declare function encodeAckDatagram(mainNext: bigint | number, feedNext: bigint | number): Uint8Array;
export declare function decodeDatagram(bytes: Uint8Array): Datagram;
export declare function resumeProofMessage(playerId: bigint | number): Uint8Array;
export declare function webTransportResumeProof(credential: Uint8Array, playerId: bigint | number, subtle?: SubtleCrypto): Promise<Uint8Array>;
export declare function fromHex(text: string): Uint8Array;
export declare function toHex(bytes: Uint8Array): string;
export declare function maxDataPayload(limit: number): number;

// --- protocol logic without I/O (advanced; used by the tests) ----------------------------------

export declare const DEFAULTS: Readonly<Required<Omit<ConnectOptions, 'url' | 'serverCertificateHashes' | 'credentials' | 'webTransportOptions' | 'WebTransport' | 'now' | 'random'>>>;

export declare class SendChannel {
  constructor(capacity: number);
  nextSeq: bigint;
  writtenNext: bigint;
  acked: bigint;
  overflowed: number;
  keptBytes: number;
  push(payload: Uint8Array): bigint;
  markWritten(seq: bigint): void;
  ack(next: bigint): number;
  replay(peerNext: bigint): { gap: bigint | null; messages: { seq: bigint; payload: Uint8Array }[] };
  readonly allAcked: boolean;
}

export declare class RecvChannel {
  next: bigint;
  data(seq: bigint): boolean;
  gap(next: bigint): bigint;
}

export declare class LaneReceiver {
  constructor(maxAgeMs?: number | null, windowMs?: number);
  newest: bigint | null;
  accept(seq: bigint, sentMs: bigint, arrivalMs: number): 'deliver' | 'stale' | 'old';
}

export declare class ResumePolicy {
  constructor(options: { budgetMs?: number; attemptTimeoutMs?: number; backoffMs?: number; backoffMaxMs?: number; random?: () => number }, now: number);
  attemptDeadline(now: number): number;
  nextDelay(now: number): number | null;
}

export type Action =
  | { op: 'write'; channel: 'main' | 'feed'; bytes: Uint8Array }
  | { op: 'datagram'; bytes: Uint8Array }
  | { op: 'finish'; channel: 'main' | 'feed' }
  | { op: 'close'; code: number; message: string }
  | { op: 'established'; resumed: boolean }
  | { op: 'failed'; error: QuicfeedError }
  | { op: 'retry'; error: QuicfeedError }
  | { op: 'lost'; error: QuicfeedError | null }
  | { op: 'ended'; error: QuicfeedError }
  | { op: 'lane'; seq: bigint; payload: Uint8Array };

/** The client's protocol logic without I/O, driven by bytes, ends, datagrams and a clock. */
export declare class SessionCore {
  constructor(options?: Omit<ConnectOptions, 'url'>);
  state: 'idle' | 'handshake' | 'established' | 'resuming' | 'closing' | 'closed';
  playerId: bigint | null;
  credential: Uint8Array | null;
  peerLimits: { main: number; feed: number } | null;
  error: QuicfeedError | null;
  rttMs: number | null;
  minRttMs: number | null;
  readonly stats: Omit<SessionStats, 'main' | 'feed' | 'lane'> & { main: { sent: number; received: number; duplicates: number }; feed: { sent: number; received: number; duplicates: number }; lane: { sent: number; received: number; dropped: number; stale: number; tooOld: number } };
  takeActions(): Action[];
  readonly hasActions: boolean;
  startFirst(now: number, deadline: number, transport?: { datagrams?: boolean }): void;
  startResume(proof: Uint8Array, now: number, deadline: number, transport?: { datagrams?: boolean }): void;
  readable(channel: 'main' | 'feed'): boolean;
  wantsData(channel: 'main' | 'feed'): boolean;
  frameLimit(channel: 'main' | 'feed'): number;
  nextTimer(): number | null;
  onStreamData(channel: 'main' | 'feed', chunk: Uint8Array, now: number): void;
  onStreamEnd(channel: 'main' | 'feed', now: number): void;
  onStreamReset(channel: 'main' | 'feed', now: number): void;
  onDatagram(bytes: Uint8Array, now: number): void;
  connectionLost(now: number, info?: { closeCode?: number; reason?: string } | null): void;
  onTimer(now: number): void;
  maxPayload(channel: 'main' | 'feed'): number;
  send(channel: 'main' | 'feed', payload: Uint8Array, now: number): bigint;
  laneSend(payload: Uint8Array, now: number, maxDatagramSize?: number | null): bigint | null;
  popReceived(channel: 'main' | 'feed', now: number): { payload: Uint8Array } | { missed: bigint } | undefined;
  beginClose(code: number, message: string, now: number): void;
  onFinWritten(channel: 'main' | 'feed'): void;
  abort(code: number, message: string): void;
  reconnect(): void;
  giveUp(): void;
  internalError(cause: unknown): void;
}
