// tickwire dashboard: a client of protocol v1 (/ws), with Server-Sent Events
// (/sse) as a fallback transport. Plain JavaScript, no dependencies, no build.
//
// Performance model: a display rate (`?rate=`, 10 updates/s per symbol by
// default) is asked of the server as `max_rate_hz`, so the server conflates
// before anything reaches the page. The transport handlers do O(1) bookkeeping
// per message and keep only the newest message per symbol (conflation again);
// all DOM writes happen once per animation frame, for the rows that changed,
// and only for the cells whose text changed. Rows are created once per symbol
// and laid out independently (see style.css); a price cell's tick-direction
// tint changes class only when the direction changes, and nothing animates.
'use strict';

(() => {
  const MAX_DEFAULT_SYMBOLS = 50;
  const LATENCY_SAMPLES = 5000;
  const BACKOFF_BASE_MS = 500;
  const BACKOFF_CAP_MS = 10_000;
  const SERVER_LATENCY_POLL_MS = 2000;
  const PING_INTERVAL_MS = 10_000; // application-level ping (WebSocket only)
  const SILENCE_LIMIT_MS = 25_000; // no message at all for this long: reconnect
  const DEFAULT_RATE_HZ = 10; // display rate per symbol: readable, and cheap to paint

  const $ = (id) => document.getElementById(id);
  const ui = {
    conn: $('conn'), connText: $('conn-text'), transport: $('transport'),
    rows: $('rows'), empty: $('empty'), datalist: $('symbol-list'),
    form: $('add-form'), input: $('add-input'), notice: $('notice'),
    kpiSymbols: $('kpi-symbols'), kpiRate: $('kpi-rate'), kpiSkipped: $('kpi-skipped'),
    latBrowser: $('lat-browser'), latServer: $('lat-server'), latCount: $('lat-count'),
    endpoint: $('endpoint'), uptime: $('uptime'), reconnects: $('reconnects'), lastMsg: $('last-msg'),
    events: $('events'), rate: $('rate'), ratePill: $('rate-pill'),
  };

  /** Connection and status events, newest first (rare: not per message). */
  function logEvent(text, kind = '') {
    const li = document.createElement('li');
    if (kind) li.className = kind;
    const time = document.createElement('time');
    time.textContent = new Date().toTimeString().slice(0, 8);
    li.append(time, text);
    ui.events.prepend(li);
    while (ui.events.childElementCount > 50) ui.events.lastElementChild.remove();
  }

  // ---------------------------------------------------------------- URL state

  const params = new URLSearchParams(location.search);
  const forcedTransport = ['ws', 'sse'].includes(params.get('transport')) ? params.get('transport') : null;
  // `?token=...`: credentials for a server that requires them; sent as a
  // WebSocket subprotocol, a bearer header to the API, and `token=` to SSE.
  const token = params.get('token');
  // `?rate=N`: at most N updates a second per symbol (sent as `max_rate_hz`,
  // so the server conflates the rest); `?rate=0` or `?rate=max`: every version
  // the connection can take. Anything else: the default.
  const rateHz = (() => {
    const raw = params.get('rate');
    if (raw === null || raw === '') return DEFAULT_RATE_HZ;
    if (raw === 'max' || raw === 'off' || raw === '0') return 0;
    const n = Number(raw);
    return Number.isFinite(n) && n > 0 ? n : DEFAULT_RATE_HZ;
  })();
  // Over SSE the server cannot be asked for a rate: the page holds a row back
  // until its gap has passed instead (the newest message is still the one shown).
  const rowGapMs = rateHz > 0 ? 1000 / rateHz : 0;

  const splitSymbols = (text) => [...new Set(text.split(',').map((s) => s.trim()).filter(Boolean))];
  // Symbols stay readable in the URL: `?symbols=spot:BTCUSDT,usdm:BTCUSDT`.
  const encodeSymbol = (s) => encodeURIComponent(s).replace(/%3A/gi, ':');

  /** Writes the selection into `?symbols=` and the ladder's symbol into `?book=` (keeping the other parameters). */
  function persistSelection() {
    const parts = ['symbols=' + selection.map(encodeSymbol).join(',')];
    if (book.symbol !== null) parts.push('book=' + encodeSymbol(book.symbol));
    for (const [k, v] of new URLSearchParams(location.search)) {
      if (k !== 'symbols' && k !== 'book') parts.push(encodeURIComponent(k) + '=' + encodeURIComponent(v));
    }
    history.replaceState(history.state, '', location.pathname + '?' + parts.join('&') + location.hash);
  }

  // ------------------------------------------------------------ number display

  // Prices arrive as exact decimal strings and are shown exactly as received.
  // Number() is used only to *derive* display values (spread, change, tick
  // direction); those are formatted to the inputs' own number of decimals and
  // never written back over a received price.
  const decimals = (s) => {
    const dot = s.indexOf('.');
    return dot < 0 ? 0 : s.length - dot - 1;
  };
  const num = (s) => (s === null || s === undefined ? NaN : Number(s));
  /** A derived value at `dec` decimals, without trailing zeros beyond two ("0.01000000" → "0.01"). */
  function derived(value, dec) {
    let text = value.toFixed(dec);
    if (dec > 2) text = text.replace(/0+$/, '').replace(/\.(\d?)$/, (_, d) => '.' + d.padEnd(2, '0'));
    return Number(text) === 0 ? text.replace('-', '') : text; // no "-0.00"
  }
  const DASH = '–';

  function formatNs(ns) {
    if (!Number.isFinite(ns)) return DASH;
    const sign = ns < 0 ? '−' : '';
    const a = Math.abs(ns);
    if (a < 1e3) return sign + a.toFixed(0) + ' ns';
    if (a < 1e6) return sign + (a / 1e3).toFixed(a < 1e4 ? 2 : 1) + ' µs';
    if (a < 1e9) return sign + (a / 1e6).toFixed(a < 1e7 ? 2 : 1) + ' ms';
    return sign + (a / 1e9).toFixed(2) + ' s';
  }
  const formatCount = (n) => n.toLocaleString('en-US');
  function formatRate(r) {
    if (r === 0) return '0';
    return r < 10 ? r.toFixed(1) : Math.round(r).toLocaleString('en-US');
  }
  function formatAgo(ms) {
    if (ms < 1000) return 'just now';
    if (ms < 60_000) return Math.floor(ms / 1000) + ' s ago';
    return Math.floor(ms / 60_000) + ' min ago';
  }
  function formatDuration(ms) {
    const s = Math.floor(ms / 1000);
    if (s < 60) return s + ' s';
    if (s < 3600) return Math.floor(s / 60) + ' min ' + (s % 60) + ' s';
    return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
  }

  // Wall-clock "now" in Unix-epoch nanoseconds, like the protocol's
  // `ingest_ts_ns`. Same clock as Date.now(), at the sub-millisecond
  // resolution the browser allows (Date.now() alone is 1 ms-quantized, coarser
  // than a loopback delivery).
  const wallNs = () => (performance.timeOrigin + performance.now()) * 1e6;

  // ------------------------------------------------------------------- rows

  const COLS = ['bid', 'ask', 'spread', 'last', 'change', 'seq', 'rate', 'skipped'];

  class Row {
    constructor(symbol) {
      this.symbol = symbol;
      this.latest = null;      // newest ticker not yet painted (conflated)
      this.seq = null;         // newest seq on this connection (null: next snapshot is the baseline)
      this.status = null;      // null (no data yet) | live | stale | halted
      this.statusReason = '';
      this.base = null;        // {value, dec, kind} first last-or-mid seen: the "change" reference
      this.prev = { bid: null, ask: null, last: null };
      this.dir = { bid: '', ask: '', last: '' }; // tick direction shown: '', 'up' or 'down'
      this.paintedAt = -Infinity; // frame time of the last paint with a new ticker
      this.count = 0;          // messages in the current rate window
      this.rate = 0;
      this.skipped = 0;
      this.countersDue = false; // rate and skipped are due for display
      this.shown = Object.create(null); // text currently in each cell

      const tr = document.createElement('tr');
      tr.dataset.symbol = symbol;
      const name = document.createElement('td');
      name.className = 'l sym';
      const colon = symbol.indexOf(':');
      if (colon > 0) {
        const ns = document.createElement('span');
        ns.className = 'ns';
        ns.textContent = symbol.slice(0, colon + 1);
        name.append(ns, symbol.slice(colon + 1));
      } else {
        name.textContent = symbol;
      }
      const statusCell = document.createElement('td');
      statusCell.className = 'l';
      this.badge = document.createElement('span');
      this.badge.className = 'badge wait';
      this.badge.textContent = 'waiting';
      statusCell.append(this.badge);
      tr.append(name, statusCell);
      this.cells = {};
      this.texts = {};
      for (const key of COLS) {
        const td = document.createElement('td');
        td.className = 'num c-' + key;
        // One Text node per cell, updated in place (no node replaced per write).
        this.texts[key] = td.appendChild(document.createTextNode(DASH));
        this.cells[key] = td;
        this.shown[key] = DASH;
        tr.append(td);
      }
      const rm = document.createElement('td');
      rm.className = 'x';
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'rm';
      button.title = 'Remove ' + symbol;
      button.setAttribute('aria-label', 'Remove ' + symbol);
      button.textContent = '×';
      button.addEventListener('click', () => removeSymbol(symbol));
      rm.append(button);
      tr.append(rm);
      // Clicking a row (or Enter/Space on it) shows its order book in the depth ladder.
      tr.tabIndex = 0;
      tr.setAttribute('aria-selected', 'false');
      tr.addEventListener('click', (e) => {
        if (!e.target.closest('button')) selectBook(symbol);
      });
      tr.addEventListener('keydown', (e) => {
        if ((e.key === 'Enter' || e.key === ' ') && e.target === tr) {
          e.preventDefault();
          selectBook(symbol);
        }
      });
      this.tr = tr;
      this.shownStatus = null;
    }

    set(key, text) {
      if (this.shown[key] !== text) {
        this.texts[key].data = text;
        this.shown[key] = text;
      }
    }

    /** Tints the cell by the direction of its last move; a class write only when that direction changes. */
    tick(key, now, before) {
      if (now === before || before === null || now === null) return;
      const a = Number(now);
      const b = Number(before);
      if (a === b) return;
      const dir = a > b ? 'up' : 'down';
      if (dir === this.dir[key]) return;
      this.dir[key] = dir;
      this.cells[key].className = 'num c-' + key + ' ' + dir;
    }

    /** Paints what changed since the last paint; `t` is the frame time. */
    paint(t) {
      const m = this.latest;
      if (m) {
        this.latest = null;
        this.paintedAt = t;
        this.tick('bid', m.bid, this.prev.bid);
        this.tick('ask', m.ask, this.prev.ask);
        this.tick('last', m.last, this.prev.last);
        this.prev.bid = m.bid;
        this.prev.ask = m.ask;
        this.prev.last = m.last;
        this.set('bid', m.bid ?? DASH);
        this.set('ask', m.ask ?? DASH);
        this.set('last', m.last ?? DASH);
        const bid = num(m.bid);
        const ask = num(m.ask);
        this.set('spread', Number.isFinite(bid) && Number.isFinite(ask)
          ? derived(ask - bid, Math.max(decimals(m.bid), decimals(m.ask)))
          : DASH);
        this.paintChange(m, bid, ask);
        this.set('seq', formatCount(m.seq));
      }
      if (this.countersDue) {
        // Counters (updates/s, skipped) refresh once a second, not per paint.
        this.countersDue = false;
        this.set('rate', formatRate(this.rate));
        this.set('skipped', formatCount(this.skipped));
      }
      const status = this.status ?? 'wait';
      if (status !== this.shownStatus) {
        this.shownStatus = status;
        this.badge.className = 'badge ' + status;
        this.badge.textContent = this.status ?? 'waiting';
        this.tr.classList.toggle('inactive', status === 'stale' || status === 'halted');
      }
      const reason = this.statusReason || '';
      if (reason !== this.shownReason) {
        this.shownReason = reason;
        this.badge.title = reason;
      }
    }

    /** Change of last trade (or mid, if the first message had no trade) since the first value seen. */
    paintChange(m, bid, ask) {
      let ref = null;
      if (!this.base || this.base.kind === 'last') {
        if (m.last !== null && m.last !== undefined) ref = { value: Number(m.last), dec: decimals(m.last), kind: 'last' };
      }
      if (!ref && (!this.base || this.base.kind === 'mid') && Number.isFinite(bid) && Number.isFinite(ask)) {
        ref = { value: (bid + ask) / 2, dec: Math.max(decimals(m.bid), decimals(m.ask)) + 1, kind: 'mid' };
      }
      if (!ref) return;
      if (!this.base) this.base = ref;
      const diff = ref.value - this.base.value;
      const dec = Math.max(ref.dec, this.base.dec);
      const pct = this.base.value !== 0 ? (diff / this.base.value) * 100 : 0;
      const text = derived(diff, dec);
      const sign = Number(text) > 0 ? '+' : '';
      this.set('change', sign + text + '\u2002' + (diff < 0 ? '-' : sign) + Math.abs(pct).toFixed(3) + '%');
      const dir = Number(text) > 0 ? 'pos' : Number(text) < 0 ? 'neg' : 'flat';
      if (dir !== this.shownDir) {
        this.shownDir = dir;
        this.cells.change.className = 'num c-change ' + dir;
      }
    }

    /** A new connection: its first snapshot is the new seq baseline. */
    resetConnection() {
      this.seq = null;
      this.status = null;
      this.statusReason = '';
    }
  }

  // ------------------------------------------------------------- page state

  /** Ordered selection of symbols; `null` until decided (URL, or the server's list). */
  let selection = null;
  const rows = new Map(); // symbol -> Row
  const dirty = new Set(); // symbols whose row needs painting
  let known = [];
  let totalSkipped = 0;
  let windowMessages = 0;
  let frameRequested = false;

  const latency = new Float64Array(LATENCY_SAMPLES);
  let latencyCount = 0;
  let latencyNext = 0;

  function markDirty(symbol) {
    dirty.add(symbol);
    if (!frameRequested) {
      frameRequested = true;
      requestAnimationFrame(paintFrame);
    }
  }

  function paintFrame(t) {
    frameRequested = false;
    if (book.dirty) paintBook();
    // Over SSE (no server-side rate), a row whose gap has not passed keeps its
    // newest ticker for a later frame. Over WebSocket the server spaced them.
    const holdBack = transport.kind === 'sse' && rowGapMs > 0;
    let held = false;
    for (const symbol of dirty) {
      const row = rows.get(symbol);
      if (row && holdBack && row.latest && t - row.paintedAt < rowGapMs) {
        held = true;
        continue;
      }
      dirty.delete(symbol); // deleting the current entry is safe while iterating a Set
      if (row) row.paint(t);
    }
    if (held && !frameRequested) {
      frameRequested = true;
      requestAnimationFrame(paintFrame);
    }
  }

  function addRow(symbol) {
    const row = new Row(symbol);
    rows.set(symbol, row);
    ui.rows.append(row.tr);
  }

  function setSelection(symbols) {
    selection = symbols.slice();
    for (const s of selection) if (!rows.has(s)) addRow(s);
    selectionChanged();
    if (bookFromUrl !== null && rows.has(bookFromUrl)) selectBook(bookFromUrl);
    bookFromUrl = null;
  }

  function selectionChanged() {
    ui.empty.hidden = selection.length > 0;
    ui.kpiSymbols.textContent = String(selection.length);
  }

  function setKnown(symbols) {
    known = symbols.slice().sort();
    ui.datalist.replaceChildren(...known.map((s) => {
      const o = document.createElement('option');
      o.value = s;
      return o;
    }));
  }

  let noticeTimer = 0;
  function notice(text) {
    ui.notice.textContent = text;
    clearTimeout(noticeTimer);
    if (text) noticeTimer = setTimeout(() => { ui.notice.textContent = ''; }, 6000);
  }

  // ------------------------------------------------------------ depth ladder

  // The selected symbol's order book, from the `book` channel: every message
  // is the complete top BOOK_DEPTH, so the page replaces what it shows with
  // the newest one (conflated per frame like the rows), after checking its
  // CRC-32 against the text docs/protocol.md defines.
  const BOOK_DEPTH = 10;

  /** CRC-32 (IEEE 802.3, zlib's `crc32`) lookup table, one entry per byte value. */
  const CRC_TABLE = (() => {
    const table = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      table[n] = c >>> 0;
    }
    return table;
  })();
  const utf8 = new TextEncoder();

  /** CRC-32 of the UTF-8 bytes of `text`, as an unsigned 32-bit integer. */
  function crc32(text) {
    let c = 0xffffffff;
    for (const byte of utf8.encode(text)) c = CRC_TABLE[(c ^ byte) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  }

  /** The text a `book` message's checksum covers: `price:size` joined by `,`, bids `|` asks, best first. */
  const checksumText = (m) =>
    m.bids.map(([p, s]) => p + ':' + s).join(',') + '|' + m.asks.map(([p, s]) => p + ':' + s).join(',');

  /** One price level of the ladder: a size bar behind the price and size, written in place. */
  class Level {
    constructor(side, level) {
      this.li = document.createElement('li');
      this.li.dataset.side = side;
      this.li.dataset.level = String(level);
      this.li.hidden = true;
      this.bar = document.createElement('span');
      this.bar.className = 'bar';
      const price = document.createElement('span');
      price.className = 'p';
      const size = document.createElement('span');
      size.className = 's';
      this.price = price.appendChild(document.createTextNode(''));
      this.size = size.appendChild(document.createTextNode(''));
      this.li.append(this.bar, price, size);
      this.shown = { price: '', size: '', scale: -1 };
    }

    /** Shows `[price, size]` with a bar `scale` (0..1) of the widest; `null` hides the level. */
    set(entry, scale) {
      if (!entry) {
        if (!this.li.hidden) this.li.hidden = true;
        return;
      }
      if (this.li.hidden) this.li.hidden = false;
      const [price, size] = entry;
      if (this.shown.price !== price) this.price.data = this.shown.price = price;
      if (this.shown.size !== size) this.size.data = this.shown.size = size;
      const rounded = Math.round(scale * 1000) / 1000;
      if (this.shown.scale !== rounded) {
        this.shown.scale = rounded;
        this.bar.style.transform = 'scaleX(' + rounded + ')';
      }
    }
  }

  const dui = {
    card: $('depth'), symbol: $('depth-symbol'), status: $('depth-status'), check: $('depth-checksum'),
    message: $('depth-message'), messageTitle: $('depth-message-title'), messageText: $('depth-message-text'),
    ladder: $('depth-ladder'), asks: $('depth-asks'), bids: $('depth-bids'), spread: $('depth-spread'), foot: $('depth-foot'),
  };
  const askLevels = Array.from({ length: BOOK_DEPTH }, (_, i) => new Level('ask', i));
  const bidLevels = Array.from({ length: BOOK_DEPTH }, (_, i) => new Level('bid', i));
  // Asks are listed worst first, so the best ask sits just above the spread.
  dui.asks.append(...askLevels.slice().reverse().map((l) => l.li));
  dui.bids.append(...bidLevels.map((l) => l.li));

  const book = {
    symbol: null,    // the selected symbol, or null
    latest: null,    // newest verified book message not yet painted
    seq: null,       // newest seq on this connection (null: the next snapshot is the baseline)
    shownSeq: null,  // seq of the book on screen
    hasBook: false,  // a verified book arrived for this symbol on this connection
    status: null,    // null (nothing heard yet) | live | stale
    reason: '',
    check: 'none',   // none | ok | mismatch: the result for the newest message
    verified: 0,
    mismatches: 0,
    resyncing: false, // a mismatch asked for a fresh snapshot that has not arrived yet
    failedInARow: 0,  // mismatches since the last verified book: sets the wait before the next resync
    resyncTimer: null, // a resync waiting out its backoff
    dirty: false,
  };

  // A book that keeps failing its checksum (say, a proxy rewriting messages)
  // must not become a loop of subscriptions: the first resync is immediate,
  // then each waits twice as long, up to 30 s, until a book verifies again.
  const RESYNC_FIRST_WAIT_MS = 500;
  const RESYNC_MAX_WAIT_MS = 30000;

  function resyncWait(failedInARow) {
    if (failedInARow <= 1) return 0;
    return Math.min(RESYNC_FIRST_WAIT_MS * 2 ** (failedInARow - 2), RESYNC_MAX_WAIT_MS);
  }

  function cancelResync() {
    clearTimeout(book.resyncTimer);
    book.resyncTimer = null;
  }

  /** Asks for a fresh snapshot of `symbol` after a mismatch, backing off while mismatches repeat. */
  function resyncBook(symbol, seq) {
    if (book.resyncTimer !== null) return; // one is already on its way
    book.failedInARow++;
    const wait = resyncWait(book.failedInARow);
    const when = wait === 0 ? 'resubscribing' : 'resubscribing in ' + wait / 1000 + ' s';
    logEvent(symbol + ' book checksum mismatch at seq ' + seq + '; ' + when, 'bad');
    const send = () => {
      book.resyncTimer = null;
      if (book.symbol === symbol && transport.kind === 'ws') transport.send(bookRequest('subscribe', symbol));
    };
    if (wait === 0) send();
    else book.resyncTimer = setTimeout(send, wait);
  }

  function bookRequest(op, symbol) {
    return op === 'subscribe'
      ? { op, channel: 'book', depth: BOOK_DEPTH, symbols: [symbol] }
      : { op, channel: 'book', symbols: [symbol] };
  }

  /** Selects `symbol` (or nothing) for the ladder: highlights its row and moves the book subscription. */
  function selectBook(symbol) {
    if (symbol === book.symbol) return;
    const previous = book.symbol;
    cancelResync();
    if (previous !== null) {
      const row = rows.get(previous);
      if (row) {
        row.tr.classList.remove('selected');
        row.tr.setAttribute('aria-selected', 'false');
      }
      if (transport.kind === 'ws') transport.send(bookRequest('unsubscribe', previous));
    }
    Object.assign(book, {
      symbol, latest: null, seq: null, shownSeq: null, hasBook: false, status: null, reason: '',
      check: 'none', verified: 0, mismatches: 0, resyncing: false, failedInARow: 0,
    });
    if (symbol !== null) {
      const row = rows.get(symbol);
      if (row) {
        row.tr.classList.add('selected');
        row.tr.setAttribute('aria-selected', 'true');
      }
      if (transport.kind === 'ws') transport.send(bookRequest('subscribe', symbol));
    }
    persistSelection();
    markBookDirty();
  }

  /** A new connection: the book starts over from its next snapshot. */
  function resetBookConnection() {
    cancelResync();
    Object.assign(book, {
      latest: null, seq: null, hasBook: false, status: null, reason: '', resyncing: false, failedInARow: 0,
    });
    markBookDirty();
  }

  function handleBook(m) {
    if (m.symbol !== book.symbol || !Array.isArray(m.bids) || !Array.isArray(m.asks)) return;
    if (!m.snapshot && book.seq !== null && m.seq <= book.seq) return;
    if (book.resyncing && !m.snapshot) return; // versions still built on what failed the check
    book.seq = m.seq;
    if (crc32(checksumText(m)) === m.checksum) {
      book.check = 'ok';
      book.verified++;
      book.resyncing = false;
      book.failedInARow = 0;
      book.latest = m;
      book.hasBook = true;
      if (book.status === null) book.status = 'live';
    } else {
      // Keep showing the last verified book and ask for a fresh snapshot.
      book.check = 'mismatch';
      book.mismatches++;
      book.resyncing = true;
      resyncBook(m.symbol, m.seq);
    }
    markBookDirty();
  }

  function handleBookStatus(m) {
    if (m.symbol !== book.symbol) return;
    if (m.state !== book.status) {
      logEvent(m.symbol + ' book ' + m.state + (m.reason ? ': ' + m.reason : ''), m.state === 'live' ? 'good' : 'warn');
    }
    book.status = m.state;
    book.reason = m.reason ?? '';
    markBookDirty();
  }

  function markBookDirty() {
    book.dirty = true;
    if (!frameRequested) {
      frameRequested = true;
      requestAnimationFrame(paintFrame);
    }
  }

  function setText(el, text) {
    if (el.textContent !== text) el.textContent = text;
  }

  /** What the card shows when there is no ladder: [state, title, text], or null for the ladder. */
  function bookPlaceholder() {
    if (book.symbol === null) return ['none', 'No symbol selected', 'Select a row of the table to see its order book.'];
    if (transport.kind !== 'ws') return ['unavailable', 'No depth over SSE', 'The book channel is served over WebSocket only.'];
    if (book.hasBook || book.shownSeq !== null) return null;
    if (book.status === 'stale' || book.status === 'halted') {
      return ['no-depth', 'No depth data', (book.reason || 'the source carries no order book') + '.'];
    }
    return ['waiting', 'Waiting for the book…', 'Subscribed to ' + book.symbol + ' at depth ' + BOOK_DEPTH + '.'];
  }

  function paintBook() {
    book.dirty = false;
    setText(dui.symbol, book.symbol ?? '');
    const placeholder = bookPlaceholder();
    if (placeholder) {
      const [state, title, text] = placeholder;
      dui.card.dataset.state = state;
      setText(dui.messageTitle, title);
      setText(dui.messageText, text);
      dui.message.hidden = false;
      dui.ladder.hidden = true;
      if (state !== 'waiting' && state !== 'no-depth') {
        for (const l of askLevels) l.set(null);
        for (const l of bidLevels) l.set(null);
        book.shownSeq = null;
      }
    } else {
      dui.card.dataset.state = book.status === 'live' ? 'live' : 'stale';
      dui.message.hidden = true;
      dui.ladder.hidden = false;
    }
    const m = book.latest;
    if (m && placeholder === null) {
      book.latest = null;
      book.shownSeq = m.seq;
      let widest = 0;
      for (const [, size] of m.bids.slice(0, BOOK_DEPTH)) widest = Math.max(widest, Number(size) || 0);
      for (const [, size] of m.asks.slice(0, BOOK_DEPTH)) widest = Math.max(widest, Number(size) || 0);
      const scale = (entry) => (entry && widest > 0 ? (Number(entry[1]) || 0) / widest : 0);
      askLevels.forEach((l, i) => l.set(m.asks[i], scale(m.asks[i])));
      bidLevels.forEach((l, i) => l.set(m.bids[i], scale(m.bids[i])));
      const [bid] = m.bids[0] ?? [];
      const [ask] = m.asks[0] ?? [];
      setText(dui.spread, bid !== undefined && ask !== undefined
        ? derived(Number(ask) - Number(bid), Math.max(decimals(bid), decimals(ask)))
        : DASH);
    }
    // Stale: the last book stays, dimmed (nothing is published while stale).
    dui.ladder.classList.toggle('outdated', book.status !== 'live' || connState !== 'live');

    const showFlags = book.symbol !== null && transport.kind === 'ws';
    dui.status.hidden = !showFlags;
    const status = book.status ?? 'wait';
    dui.status.className = 'badge ' + status;
    setText(dui.status, book.status ?? 'waiting');
    dui.status.title = book.reason;
    dui.check.hidden = !showFlags;
    dui.check.dataset.state = book.check;
    dui.check.dataset.verified = String(book.verified);
    dui.check.dataset.mismatches = String(book.mismatches);
    setText(dui.check, book.check === 'none' ? 'checksum –' : 'checksum ' + book.check);
    dui.check.title = formatCount(book.verified) + ' messages verified, ' + formatCount(book.mismatches) + ' mismatched';
    setText(dui.foot, showFlags && book.shownSeq !== null
      ? 'seq ' + formatCount(book.shownSeq) + ' · ' + formatCount(book.verified) + ' verified · ' +
        formatCount(book.mismatches) + ' mismatched (CRC-32)'
      : 'Top ' + BOOK_DEPTH + ' levels of the book channel, each message checked against its CRC-32.');
  }

  // --------------------------------------------------------- add and remove

  function addSymbol(raw) {
    const symbol = raw.trim();
    if (!symbol) return;
    if (selection === null) return notice('Still loading the symbol list…');
    if (rows.has(symbol)) return notice(symbol + ' is already in the table');
    if (known.length && !known.includes(symbol)) return notice('Unknown symbol: ' + symbol);
    selection.push(symbol);
    addRow(symbol);
    selectionChanged();
    persistSelection();
    notice('');
    transport.subscribe([symbol]);
  }

  function removeSymbol(symbol, { tellServer = true } = {}) {
    const row = rows.get(symbol);
    if (!row) return;
    if (symbol === book.symbol) selectBook(null);
    row.tr.remove();
    rows.delete(symbol);
    dirty.delete(symbol);
    selection = selection.filter((s) => s !== symbol);
    selectionChanged();
    persistSelection();
    if (tellServer) transport.unsubscribe([symbol]);
  }

  ui.form.addEventListener('submit', (e) => {
    e.preventDefault();
    addSymbol(ui.input.value);
    ui.input.value = '';
  });

  // --------------------------------------------------------- message handling

  function handleMessage(m) {
    lastMessageAt = Date.now();
    switch (m.type) {
      case 'ticker': {
        const row = rows.get(m.symbol);
        if (!row) return; // unsubscribed meanwhile
        // Latest value wins: never show an older version after a newer one.
        // A snapshot (e.g. after a reconnect) is a new baseline.
        if (!m.snapshot && row.seq !== null && m.seq <= row.seq) return;
        row.seq = m.seq;
        row.latest = m;
        row.count++;
        windowMessages++;
        if (m.skipped) {
          row.skipped += m.skipped;
          totalSkipped += m.skipped;
        }
        if (row.status === null) row.status = 'live';
        // A snapshot carries the book's last ingest time, not a fresh
        // delivery: it would only measure how long the book sat still.
        if (!m.snapshot && typeof m.ingest_ts_ns === 'number') {
          latency[latencyNext] = wallNs() - m.ingest_ts_ns;
          latencyNext = (latencyNext + 1) % LATENCY_SAMPLES;
          if (latencyCount < LATENCY_SAMPLES) latencyCount++;
        }
        markDirty(m.symbol);
        return;
      }
      case 'book':
        handleBook(m);
        return;
      case 'status': {
        if (m.channel === 'book') return handleBookStatus(m);
        const row = rows.get(m.symbol);
        if (!row) return;
        if (m.state !== row.status) {
          logEvent(m.symbol + ' ' + m.state + (m.reason ? ': ' + m.reason : ''), m.state === 'live' ? 'good' : 'warn');
        }
        row.status = m.state;
        row.statusReason = m.reason ?? '';
        markDirty(m.symbol);
        return;
      }
      case 'symbols':
        setKnown(m.symbols);
        if (selection === null) {
          setSelection(m.symbols.slice(0, MAX_DEFAULT_SYMBOLS));
          transport.subscribe(selection);
        }
        return;
      case 'error': {
        const symbols = m.symbols ?? [];
        logEvent('error ' + m.code + (symbols.length ? ' ' + symbols.join(', ') : ''), 'bad');
        notice(m.message + (symbols.length ? ': ' + symbols.join(', ') : '') + ' (' + m.code + ')');
        if (m.code === 'unknown_symbol' || m.code === 'not_entitled') {
          for (const s of symbols) removeSymbol(s, { tellServer: false });
        }
        return;
      }
      default:
        return; // subscribed, unsubscribed, pong, and anything newer than v1
    }
  }

  // -------------------------------------------------------- connection state

  let connState = 'connecting';
  let lastMessageAt = 0;
  let connectedAt = 0;
  let reconnects = 0;
  let retryAt = 0;

  function setState(state) {
    connState = state;
    ui.conn.dataset.state = state;
    markBookDirty(); // the ladder dims while disconnected
    document.body.dataset.conn = state;
    if (state === 'live') {
      ui.connText.textContent = 'Live';
    } else if (state === 'connecting') {
      ui.connText.textContent = 'Connecting…';
    } else {
      renderCountdown();
    }
  }

  function renderCountdown() {
    if (connState !== 'reconnecting') return;
    const left = retryAt - Date.now();
    ui.connText.textContent = left > 0
      ? 'Reconnecting in ' + (left / 1000).toFixed(1) + ' s'
      : 'Reconnecting…';
  }

  // ------------------------------------------------------------- transports

  /**
   * One connection at a time, over WebSocket or SSE. Every connection attempt
   * gets a generation number; callbacks of older generations are ignored.
   */
  const transport = {
    kind: forcedTransport === 'sse' ? 'sse' : 'ws',
    gen: 0,
    attempt: 0, // consecutive failures, drives the backoff
    wsUnusable: 0, // consecutive WebSocket failures while HTTP works
    ws: null,
    es: null,
    nextId: 1,
    retryTimer: 0,
    pingTimer: 0,
    usable: false,

    start() {
      clearTimeout(this.retryTimer);
      this.stop();
      const gen = ++this.gen;
      this.usable = false;
      ui.transport.textContent = this.kind === 'ws' ? 'WebSocket' : 'SSE';
      showRate();
      if (this.kind === 'ws') this.startWs(gen);
      else this.startSse(gen);
    },

    stop() {
      clearInterval(this.pingTimer);
      if (this.ws) {
        const ws = this.ws;
        this.ws = null;
        ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
        try { ws.close(1000); } catch { /* already closed */ }
      }
      if (this.es) {
        this.es.close();
        this.es = null;
      }
    },

    /** The connection delivered its first message: it is live. */
    becameUsable() {
      if (this.usable) return;
      this.usable = true;
      this.attempt = 0;
      if (this.kind === 'ws') this.wsUnusable = 0;
      if (connectedAt && connState !== 'live') {
        reconnects++;
        ui.reconnects.textContent = String(reconnects);
      }
      connectedAt = Date.now();
      logEvent('connected over ' + (this.kind === 'ws' ? 'WebSocket' : 'SSE'), 'good');
      for (const row of rows.values()) {
        row.resetConnection();
        markDirty(row.symbol);
      }
      resetBookConnection();
      setState('live');
    },

    /** The connection failed or ended: back off (exponential, with jitter) and start again. */
    retry() {
      this.stop();
      this.gen++;
      this.attempt++;
      const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** (this.attempt - 1));
      const delay = ceiling / 2 + Math.random() * (ceiling / 2);
      retryAt = Date.now() + delay;
      if (connState !== 'reconnecting') logEvent('connection lost', 'bad');
      setState('reconnecting');
      clearTimeout(this.retryTimer);
      this.retryTimer = setTimeout(() => this.start(), delay);
    },

    send(message) {
      if (this.ws && this.ws.readyState === WebSocket.OPEN) {
        this.ws.send(JSON.stringify({ ...message, id: this.nextId++ }));
      }
    },

    subscribe(symbols) {
      if (!symbols.length) return;
      if (this.kind === 'ws') this.send(subscribeRequest(symbols));
      else this.reopenSse();
    },

    unsubscribe(symbols) {
      if (!symbols.length) return;
      if (this.kind === 'ws') this.send({ op: 'unsubscribe', symbols });
      else this.reopenSse();
    },

    // -- WebSocket

    startWs(gen) {
      const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws';
      ui.endpoint.textContent = url;
      let ws;
      try {
        ws = new WebSocket(url, token ? ['tickwire.v1', 'bearer.' + token] : undefined);
      } catch {
        this.retry();
        return;
      }
      this.ws = ws;
      ws.onopen = () => {
        if (gen !== this.gen) return;
        this.send({ op: 'list' });
        if (selection && selection.length) this.send(subscribeRequest(selection));
        if (book.symbol !== null) this.send(bookRequest('subscribe', book.symbol));
        this.pingTimer = setInterval(() => {
          // A half-open TCP connection never fires `close` in time.
          if (Date.now() - lastMessageAt > SILENCE_LIMIT_MS) this.retry();
          else this.send({ op: 'ping' });
        }, PING_INTERVAL_MS);
      };
      ws.onmessage = (e) => {
        if (gen !== this.gen) return;
        this.becameUsable();
        let m;
        try { m = JSON.parse(e.data); } catch { return; }
        handleMessage(m);
      };
      ws.onclose = () => {
        if (gen !== this.gen) return;
        this.ws = null;
        if (this.usable || forcedTransport === 'ws') {
          this.retry();
          return;
        }
        // Closed before it ever delivered a message. If plain HTTP to the
        // same server works, the WebSocket itself is being blocked (proxy,
        // firewall): after two such failures in a row, use SSE instead.
        serverReachable().then((reachable) => {
          if (gen !== this.gen) return;
          if (reachable) this.wsUnusable++;
          if (this.wsUnusable >= 2) {
            this.kind = 'sse';
            this.attempt = 0;
            notice('WebSocket unavailable; using Server-Sent Events');
            this.start();
          } else {
            this.retry();
          }
        });
      };
    },

    // -- Server-Sent Events

    startSse(gen) {
      // SSE has no `list` op: the symbol list comes from the JSON API.
      const headers = token ? { Authorization: 'Bearer ' + token } : {};
      fetch('/api/symbols', { cache: 'no-store', headers })
        .then((r) => (r.ok ? r.json() : Promise.reject(new Error('HTTP ' + r.status))))
        .then((symbols) => {
          if (gen !== this.gen) return;
          handleMessage({ type: 'symbols', symbols });
          this.openEventSource(gen);
        })
        .catch(() => {
          if (gen === this.gen) this.retry();
        });
    },

    openEventSource(gen) {
      const url = '/sse?symbols=' + selection.map(encodeSymbol).join(',');
      ui.endpoint.textContent = location.origin + url;
      const credentials = token ? '&token=' + encodeURIComponent(token) : '';
      if (!selection.length) {
        // Nothing to stream; the server answered /api/symbols, so it is up.
        this.becameUsable();
        return;
      }
      const es = new EventSource(url + credentials);
      this.es = es;
      es.onopen = () => {
        if (gen === this.gen) this.becameUsable();
      };
      es.onmessage = (e) => {
        if (gen !== this.gen) return;
        this.becameUsable();
        let m;
        try { m = JSON.parse(e.data); } catch { return; }
        handleMessage(m);
      };
      // EventSource would reconnect by itself (with Last-Event-ID, which gets
      // a fresh snapshot); reconnecting ourselves gives the same result with
      // the same backoff and visible countdown as the WebSocket.
      es.onerror = () => {
        if (gen === this.gen) this.retry();
      };
    },

    /** Over SSE the subscription is the URL: a new selection means a new stream. */
    reopenSse() {
      // Without a stream (the symbol list is still loading, or a retry is
      // pending) there is nothing to reopen: that start will read the new list.
      if (this.kind !== 'sse' || !(this.es || this.usable)) return;
      this.stop();
      const gen = ++this.gen;
      this.usable = false;
      this.openEventSource(gen);
    },
  };

  function subscribeRequest(symbols) {
    return rateHz > 0 ? { op: 'subscribe', symbols, max_rate_hz: rateHz } : { op: 'subscribe', symbols };
  }

  function showRate() {
    ui.rate.textContent = rateHz > 0 ? '≤ ' + formatRate(rateHz) + '/s' : 'every update';
    ui.ratePill.title = rateHz > 0
      ? 'At most ' + rateHz + ' updates a second per symbol' +
        (transport.kind === 'ws' ? ' (max_rate_hz: the server conflates the rest, counted in skipped)' : ' (held back in the page: SSE has no rate option)') +
        '. Change with ?rate=N in the URL; ?rate=max for every update.'
      : 'Every version this connection can take (?rate=max). Set ?rate=N to cap it.';
  }

  function serverReachable() {
    return fetch('/healthz', { cache: 'no-store' }).then((r) => r.ok, () => false);
  }

  ui.conn.addEventListener('click', () => {
    if (connState === 'reconnecting') transport.start(); // retry now
  });

  // ---------------------------------------------------- periodic (not per message)

  function percentile(sorted, p) {
    if (!sorted.length) return NaN;
    return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))];
  }

  function setStat(container, key, text) {
    const el = container.querySelector('[data-k="' + key + '"]');
    if (el.textContent !== text) el.textContent = text;
  }

  let windowStart = performance.now();
  setInterval(() => {
    const now = performance.now();
    const seconds = (now - windowStart) / 1000;
    windowStart = now;
    for (const row of rows.values()) {
      row.rate = row.count / seconds;
      row.count = 0;
      row.countersDue = true;
      markDirty(row.symbol);
    }
    ui.kpiRate.textContent = formatRate(windowMessages / seconds);
    windowMessages = 0;
    ui.kpiSkipped.textContent = formatCount(totalSkipped);

    const sorted = latency.slice(0, latencyCount).sort();
    setStat(ui.latBrowser, 'p50', formatNs(percentile(sorted, 0.5)));
    setStat(ui.latBrowser, 'p90', formatNs(percentile(sorted, 0.9)));
    setStat(ui.latBrowser, 'p99', formatNs(percentile(sorted, 0.99)));
    setStat(ui.latBrowser, 'max', formatNs(sorted.length ? sorted[sorted.length - 1] : NaN));
    ui.latCount.textContent = formatCount(latencyCount);

    ui.uptime.textContent = connState === 'live' ? formatDuration(Date.now() - connectedAt) : DASH;
    ui.lastMsg.textContent = lastMessageAt ? formatAgo(Date.now() - lastMessageAt) : DASH;
  }, 1000);

  setInterval(renderCountdown, 100);

  async function pollServerLatency() {
    try {
      const r = await fetch('/api/latency', { cache: 'no-store' });
      if (!r.ok) return;
      const s = await r.json();
      for (const key of ['p50_ns', 'p90_ns', 'p99_ns', 'p999_ns', 'max_ns']) {
        setStat(ui.latServer, key, s.count ? formatNs(s[key]) : DASH);
      }
      setStat(ui.latServer, 'count', formatCount(s.count));
    } catch {
      // Server unreachable: keep the last values; the connection pill says why.
    }
  }
  pollServerLatency();
  setInterval(pollServerLatency, SERVER_LATENCY_POLL_MS);

  // ------------------------------------------------------------------ start

  const fromUrl = params.get('symbols');
  let bookFromUrl = params.get('book');
  if (fromUrl !== null) setSelection(splitSymbols(fromUrl));
  setState('connecting');
  transport.start();
})();
