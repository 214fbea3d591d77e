// The dashboard (GET /) in a real Chromium, against a real tickwire server.
//
//   TICKWIRE_BIN=target/debug/tickwire node --test tests/browser/dashboard.test.mjs
//
// Needs /usr/bin/chromium (or $CHROMIUM) and `npm ci --prefix tests/browser`.
// With SAVE_SCREENSHOT=1 the first test also writes docs/dashboard.png.
// Waits poll the page for a condition; nothing depends on how fast it happens.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const BIN = process.env.TICKWIRE_BIN;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const SCREENSHOT = path.join(REPO, 'docs', 'dashboard.png');
/** Upper bound on one wait, so a broken page fails instead of hanging. Not a performance limit. */
const WAIT = 30_000;
const TEST = { timeout: 120_000 };

assert.ok(BIN, 'set TICKWIRE_BIN to the tickwire binary (cargo test does this via tests/browser.rs)');

// ------------------------------------------------------------------ server

async function freePort() {
  const probe = net.createServer();
  probe.listen(0, '127.0.0.1');
  await once(probe, 'listening');
  const { port } = probe.address();
  probe.close();
  await once(probe, 'close');
  return port;
}

/** Starts `tickwire serve` on the bundled sample; resolves once it listens. */
async function startServer(port) {
  const child = spawn(BIN, ['serve', '--listen', `127.0.0.1:${port}`], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, TICKWIRE_LOG: 'info', NO_COLOR: '1' },
  });
  let log = '';
  const exited = once(child, 'exit');
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start:\n${log}`)), WAIT);
    const onData = (chunk) => {
      log += chunk;
      if (/serving \d+ symbols: ws:\/\/\S+\/ws/.test(log)) {
        clearTimeout(timer);
        resolve();
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    exited.then(([code, signal]) => {
      clearTimeout(timer);
      reject(new Error(`server exited (${code ?? signal}) before listening:\n${log}`));
    });
  });
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      await exited;
    },
  };
}

/** A server on a fresh port, stopped when the test ends. */
async function serverFor(t, port) {
  const server = await startServer(port ?? (await freePort()));
  t.after(() => server.stop('SIGKILL'));
  return server;
}

// ----------------------------------------------------------------- browser

let browser;

before(async () => {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
    ],
  });
});

after(async () => {
  await browser?.close();
});

/** A fresh page at 1280×800 whose uncaught exceptions fail the test. */
async function pageFor(t) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e));
  t.after(async () => {
    await context.close();
    assert.deepEqual(errors.map(String), [], 'uncaught exceptions in the page');
  });
  return page;
}

// ---------------------------------------------------------- page helpers

const rowSymbols = (page) =>
  page.$$eval('#rows tr', (trs) => trs.map((tr) => tr.dataset.symbol));

const waitForState = (page, state) =>
  page.waitForSelector(`#conn[data-state="${state}"]`, { timeout: WAIT });

/** Waits until every listed row shows a bid, an ask and a seq. */
function waitForValues(page, symbols) {
  return page.waitForFunction(
    (symbols) => symbols.every((s) => {
      const tr = document.querySelector(`#rows tr[data-symbol="${CSS.escape(s)}"]`);
      if (!tr) return false;
      return ['bid', 'ask', 'seq'].every((c) => tr.querySelector('.c-' + c).textContent !== '–');
    }),
    symbols,
    { timeout: WAIT },
  );
}

const cellText = (page, symbol, column) =>
  page.$eval(`#rows tr[data-symbol="${symbol}"] .c-${column}`, (td) => td.textContent);

const seqOf = async (page, symbol) => Number((await cellText(page, symbol, 'seq')).replace(/,/g, ''));

/** Waits until the row's seq is above `previous` (the values are still updating). */
function waitForSeqAbove(page, symbol, previous) {
  return page.waitForFunction(
    ([symbol, previous]) => {
      const td = document.querySelector(`#rows tr[data-symbol="${CSS.escape(symbol)}"] .c-seq`);
      return td && Number(td.textContent.replace(/,/g, '')) > previous;
    },
    [symbol, previous],
    { timeout: WAIT },
  );
}

const urlSymbols = (page) => new URL(page.url()).searchParams.get('symbols');

async function served(server) {
  const response = await fetch(`${server.url}/api/symbols`);
  assert.equal(response.status, 200);
  return response.json();
}

// ------------------------------------------------------------------- tests

test('the table fills with every served symbol and keeps updating', TEST, async (t) => {
  const server = await serverFor(t);
  const symbols = await served(server);
  assert.ok(symbols.length >= 2, `the sample serves several symbols: ${symbols}`);
  const page = await pageFor(t);

  const response = await page.goto(server.url + '/');
  assert.match(response.headers()['content-type'], /^text\/html/);
  await waitForState(page, 'live');
  assert.equal(await page.textContent('#transport'), 'WebSocket');
  // No ?symbols= in the URL: the default is every symbol from the `list` op.
  assert.deepEqual(await rowSymbols(page), symbols);
  assert.equal(await page.$$eval('#symbol-list option', (o) => o.length), symbols.length);
  await waitForValues(page, symbols);

  for (const symbol of symbols) {
    // Prices are shown as the exact decimal strings of the protocol.
    for (const column of ['bid', 'ask', 'last', 'spread']) {
      const text = await cellText(page, symbol, column);
      assert.match(text, /^(\d+(\.\d+)?|–)$/, `${symbol} ${column}: ${text}`);
    }
    const seq = await seqOf(page, symbol);
    await waitForSeqAbove(page, symbol, seq);
  }
  // Per-symbol updates/s, the latency panels (page-side and GET /api/latency).
  await page.waitForFunction(
    () => [...document.querySelectorAll('#rows .c-rate')].some((td) => Number(td.textContent) > 0),
    null,
    { timeout: WAIT },
  );
  await page.waitForFunction(
    () => ['#lat-browser [data-k="p50"]', '#lat-server [data-k="p50_ns"]', '#lat-server [data-k="count"]']
      .every((sel) => !['–', '0'].includes(document.querySelector(sel).textContent)),
    null,
    { timeout: WAIT },
  );
  assert.equal(await page.$$eval('#rows .badge.live', (b) => b.length), symbols.length);

  if (process.env.SAVE_SCREENSHOT === '1') {
    await page.screenshot({ path: SCREENSHOT });
    t.diagnostic(`screenshot: ${SCREENSHOT}`);
  }
});

test('symbols are added from the input and removed by their button; the URL follows', TEST, async (t) => {
  const server = await serverFor(t);
  const [first, second] = await served(server);
  const page = await pageFor(t);

  await page.goto(`${server.url}/?symbols=${first}`);
  await waitForState(page, 'live');
  assert.deepEqual(await rowSymbols(page), [first]);
  await waitForValues(page, [first]);
  // The autocomplete holds every served symbol (from the `list` op).
  await page.waitForFunction(
    (s) => [...document.querySelectorAll('#symbol-list option')].some((o) => o.value === s),
    second,
    { timeout: WAIT },
  );

  await page.fill('#add-input', second);
  await page.press('#add-input', 'Enter');
  await waitForValues(page, [first, second]);
  assert.deepEqual(await rowSymbols(page), [first, second]);
  assert.equal(urlSymbols(page), `${first},${second}`);
  assert.equal(await page.inputValue('#add-input'), '');

  await page.click(`#rows tr[data-symbol="${first}"] button.rm`);
  await page.waitForSelector(`#rows tr[data-symbol="${first}"]`, { state: 'detached', timeout: WAIT });
  assert.deepEqual(await rowSymbols(page), [second]);
  assert.equal(urlSymbols(page), second);
  const seq = await seqOf(page, second);
  await waitForSeqAbove(page, second, seq);

  // An unknown name is refused with a message, not added.
  await page.fill('#add-input', 'NOPE:NOTHING');
  await page.press('#add-input', 'Enter');
  await page.waitForFunction(() => /Unknown symbol/.test(document.querySelector('#notice').textContent), null, {
    timeout: WAIT,
  });
  assert.deepEqual(await rowSymbols(page), [second]);

  // The selection survives a reload, through the URL.
  await page.reload();
  await waitForState(page, 'live');
  await waitForValues(page, [second]);
  assert.deepEqual(await rowSymbols(page), [second]);
});

test('a server restart shows reconnecting, then recovers on its own', TEST, async (t) => {
  const port = await freePort();
  let server = await serverFor(t, port);
  const [symbol] = await served(server);
  const page = await pageFor(t);

  await page.goto(`${server.url}/?symbols=${symbol}`);
  await waitForState(page, 'live');
  await waitForValues(page, [symbol]);

  await server.stop('SIGTERM');
  await waitForState(page, 'reconnecting');
  // The backoff countdown is visible.
  await page.waitForFunction(
    () => /^Reconnecting in \d+\.\d s$/.test(document.querySelector('#conn-text').textContent),
    null,
    { timeout: WAIT },
  );
  const before = await seqOf(page, symbol);

  server = await serverFor(t, port);
  await waitForState(page, 'live');
  // A restarted server starts its versions over: the new snapshot is the new
  // baseline, and values keep updating from there.
  await page.waitForFunction(
    ([symbol, before]) => {
      const td = document.querySelector(`#rows tr[data-symbol="${CSS.escape(symbol)}"] .c-seq`);
      return td.textContent !== '–' && Number(td.textContent.replace(/,/g, '')) !== before;
    },
    [symbol, before],
    { timeout: WAIT },
  );
  const after = await seqOf(page, symbol);
  await waitForSeqAbove(page, symbol, after);
  // The server was down, not the WebSocket blocked: no fallback to SSE.
  assert.equal(await page.textContent('#transport'), 'WebSocket');
  assert.equal(await page.textContent('#reconnects'), '1');
});

test('with WebSocket blocked the page falls back to Server-Sent Events', TEST, async (t) => {
  const server = await serverFor(t);
  const symbols = await served(server);
  const page = await pageFor(t);
  // Every WebSocket the page opens is closed at once, as a hostile proxy would.
  await page.routeWebSocket(/\/ws$/, (ws) => ws.close());

  await page.goto(server.url + '/');
  await page.waitForFunction(() => document.querySelector('#transport').textContent === 'SSE', null, {
    timeout: WAIT,
  });
  await waitForState(page, 'live');
  assert.deepEqual(await rowSymbols(page), symbols);
  await waitForValues(page, symbols);
  const seq = await seqOf(page, symbols[0]);
  await waitForSeqAbove(page, symbols[0], seq);

  // Changing the selection reopens the stream with the new list.
  await page.click(`#rows tr[data-symbol="${symbols[0]}"] button.rm`);
  await page.waitForSelector(`#rows tr[data-symbol="${symbols[0]}"]`, { state: 'detached', timeout: WAIT });
  assert.equal(urlSymbols(page), symbols.slice(1).join(','));
  const other = symbols[1];
  const otherSeq = await seqOf(page, other);
  await waitForSeqAbove(page, other, otherSeq);
  await page.fill('#add-input', symbols[0]);
  await page.press('#add-input', 'Enter');
  await waitForValues(page, symbols);
});
