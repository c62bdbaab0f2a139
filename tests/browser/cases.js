// The browser cases of tests/browser.rs: run by a real headless Chromium against a real quicfeed
// server, through web/quicfeed.js. The page reports each case with a POST to /report; the test
// serves /control for what only the test can do (the network conditioner between page and
// server). The server's application: it echoes main and feed messages on their channel, echoes
// lane messages on the lane prefixed with "echo:", sends a lane message every 20 ms, closes a
// session asked to with "close-me" on main, and refuses the credentials "refuse-me".
import { connect, Reason, QuicfeedError } from '/quicfeed.js';

const config = await (await fetch('/config.json')).json();
const encoder = new TextEncoder();
const decoder = new TextDecoder();
const text = (bytes) => decoder.decode(bytes);

async function post(path, body) {
  await fetch(path, { method: 'POST', body: JSON.stringify(body) });
}
const control = (op, ms = 0) => post(`/control?op=${op}&ms=${ms}`, {});
const log = (message) => post('/log', { message });

function open(extra = {}) {
  return connect({ url: config.url, serverCertificateHashes: config.hashes, credentials: 'browser test', ...extra });
}

function check(condition, what) {
  if (!condition) throw new Error(what);
}

/** Resolves with the value of `promise`, or rejects after `ms` saying what did not happen. */
function within(ms, what, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Sends `count` numbered messages on main, calling `during(i)` before each, and checks that
 * the echoes come back exactly once and in order. */
async function numberedEchoes(session, count, during = async () => {}) {
  const received = [];
  const reader = (async () => {
    while (received.length < count) received.push(Number(text(await session.main.recv())));
  })();
  for (let i = 0; i < count; i++) {
    await during(i);
    await session.main.send(encoder.encode(String(i)));
  }
  await within(30000, `the echoes of ${count} main messages (got ${received.length})`, reader);
  for (let i = 0; i < count; i++) check(received[i] === i, `echo ${i} arrived as ${received[i]} (lost, duplicated or out of order)`);
}

const cases = {
  async handshake_and_both_channels() {
    const started = performance.now();
    const session = await open();
    const connectMs = performance.now() - started;
    check(typeof session.playerId === 'bigint' && session.playerId > 0n, `player ID ${session.playerId}`);
    check(session.state === 'connected', `state ${session.state}`);
    await session.main.send(encoder.encode('ping'));
    await session.feed.send(encoder.encode('tick'));
    check(text(await within(10000, 'the main echo', session.main.recv())) === 'ping', 'main echo');
    check(text(await within(10000, 'the feed echo', session.feed.recv())) === 'tick', 'feed echo');
    const closed = await session.close({ message: 'done' });
    check(closed.code === Reason.NORMAL, `graceful close ended with ${closed.reason}`);
    return { detail: `player ${session.playerId}`, figures: { connect_loopback_ms: connectMs } };
  },

  async lane_both_ways() {
    const session = await open();
    const first = await within(10000, 'a lane message from the server', session.lane.recv());
    check(first && text(first.payload).startsWith('tick '), `lane message ${first && text(first.payload)}`);
    // The lane is unreliable: send until the echo comes back.
    let echoed = false;
    const waiter = (async () => {
      for (;;) {
        const m = await session.lane.recv();
        if (!m) return;
        if (text(m.payload) === 'echo:hello') { echoed = true; return; }
      }
    })();
    for (let i = 0; i < 100 && !echoed; i++) {
      session.lane.send(encoder.encode('hello'));
      await Promise.race([waiter, new Promise((r) => setTimeout(r, 100))]);
    }
    check(echoed, 'the server never echoed a lane message');
    await session.close();
    return { detail: `first lane seq ${first.seq}` };
  },

  async refused_with_a_reason() {
    try {
      const session = await open({ credentials: 'refuse-me' });
      await session.close();
    } catch (e) {
      check(e instanceof QuicfeedError, `not a QuicfeedError: ${e}`);
      check(e.code === Reason.AUTH_REFUSED, `refused with ${e.reason}, not AUTH_REFUSED`);
      check(!e.local, 'the refusal did not come from the server');
      check(e.detail.includes('not on the guest list'), `refusal message "${e.detail}"`);
      return { detail: `${e.reason}: ${e.detail}` };
    }
    throw new Error('the server admitted credentials it refuses');
  },

  async closed_by_the_server_with_a_reason() {
    const session = await open();
    await session.main.send(encoder.encode('close-me'));
    const closed = await within(10000, 'the session to end', session.closed);
    check(closed.code === Reason.SERVER_SHUTDOWN, `ended with ${closed.reason}, not SERVER_SHUTDOWN`);
    check(closed.message.includes('asked to close'), `close message "${closed.message}"`);
    return { detail: `${closed.reason}: ${closed.message}` };
  },

  async resume_after_the_page_drops_its_connection() {
    const session = await open();
    const player = session.playerId;
    let resumingAt = 0;
    let resumeMs = null;
    session.addEventListener('resuming', () => { resumingAt = performance.now(); });
    session.addEventListener('resumed', () => { resumeMs = performance.now() - resumingAt; });
    await numberedEchoes(session, 200, async (i) => {
      if (i === 60) session.dropConnection();
      if (i % 20 === 0) await new Promise((r) => setTimeout(r, 5));
    });
    check(resumeMs !== null, 'the session never resumed');
    check(session.playerId === player, `player ID changed from ${player} to ${session.playerId}`);
    check(session.stats.resumes === 1, `resumes ${session.stats.resumes}`);
    await session.close();
    return { detail: `200 messages, player ${player} kept`, figures: { resume_after_drop_ms: resumeMs } };
  },

  async resume_after_a_network_outage() {
    const session = await open({ livenessTimeoutMs: 600 });
    const player = session.playerId;
    let resumed = false;
    session.addEventListener('resumed', () => { resumed = true; });
    await numberedEchoes(session, 100, async (i) => {
      if (i === 30) await control('blackhole', 1500);
      await new Promise((r) => setTimeout(r, 10));
    });
    check(resumed, 'the session never resumed');
    check(session.playerId === player, `player ID changed from ${player} to ${session.playerId}`);
    await session.close();
    return { detail: `100 messages across a 1.5 s outage, player ${player} kept` };
  },

  async twenty_sessions_at_once() {
    const sessions = await within(30000, '20 handshakes', Promise.all(Array.from({ length: 20 }, () => open())));
    const players = new Set(sessions.map((s) => s.playerId));
    check(players.size === 20, `${players.size} distinct player IDs`);
    await Promise.all(sessions.map(async (s, i) => {
      await s.main.send(encoder.encode(`hello ${i}`));
      check(text(await within(20000, `echo ${i}`, s.main.recv())) === `hello ${i}`, `echo ${i}`);
    }));
    const ends = await Promise.all(sessions.map((s) => s.close()));
    check(ends.every((e) => e.code === Reason.NORMAL), 'a graceful close did not end NORMAL');
    return { detail: '20 sessions, 20 echoes' };
  },

  async connect_at_20_ms_rtt() {
    // The median of a few connects, on loopback and then through 10 ms each way: the difference
    // over 20 ms is the round trips the connect costs (Chromium's own setup time cancels out).
    const median = async (n) => {
      const times = [];
      for (let i = 0; i < n; i++) {
        const started = performance.now();
        const session = await open();
        times.push(performance.now() - started);
        await session.close();
      }
      return times.sort((a, b) => a - b)[Math.floor(n / 2)];
    };
    const loopbackMs = await median(5);
    await control('latency', 10);
    let slowMs;
    let resumeMs;
    try {
      slowMs = await median(5);
      const session = await open();
      const resumed = new Promise((r) => session.addEventListener('resumed', r, { once: true }));
      const started = performance.now();
      session.dropConnection();
      await within(20000, 'the resume at 20 ms RTT', resumed);
      resumeMs = performance.now() - started;
      await session.close();
    } finally {
      await control('clear');
    }
    const rtts = (slowMs - loopbackMs) / 20;
    check(rtts > 2, `a connect cost only ${rtts.toFixed(1)} round trips: the latency was not applied`);
    return {
      detail: `median connect ${loopbackMs.toFixed(0)} ms on loopback, ${slowMs.toFixed(0)} ms at 20 ms RTT`,
      figures: {
        connect_loopback_median_ms: loopbackMs,
        connect_20ms_rtt_median_ms: slowMs,
        connect_round_trips: rtts,
        resume_20ms_rtt_ms: resumeMs,
      },
    };
  },
};

window.addEventListener('unhandledrejection', (e) => log(`unhandled rejection: ${e.reason?.stack ?? e.reason}`));
window.addEventListener('error', (e) => log(`error: ${e.message}`));

const only = new URLSearchParams(location.search).get('only');
for (const name of config.cases) {
  if (only && name !== only) continue;
  let result;
  try {
    const run = cases[name];
    if (!run) throw new Error('no such case in cases.js');
    result = { case: name, ok: true, ...(await within(60000, 'the case to finish', run())) };
  } catch (e) {
    result = { case: name, ok: false, detail: e instanceof QuicfeedError ? `${e.reason}: ${e.message}` : String(e?.stack ?? e) };
  }
  await post('/report', result);
}
await post('/report', { case: '', ok: true, detail: 'all cases ran' });
