// What the JavaScript peers (Bun, Node `ws`) share: settings, a wall clock in
// nanoseconds, the synthetic feed (random-walk quotes for SYN000.. at a constant
// total rate, a trade every 10th update, like tickwire's `kind = "synthetic"`),
// protocol v1 message encoding and the `/metrics` page `tickwire bench` scrapes.
//
// Settings: --symbols N --rate R --port P --host H, or SYMBOLS / RATE / PORT /
// HOST in the environment (arguments win). Defaults: 100 symbols, 2,000
// updates/s, 127.0.0.1:8080.

export function settings(argv = process.argv.slice(2), env = process.env) {
  const out = {
    symbols: Number(env.SYMBOLS ?? 100),
    rate: Number(env.RATE ?? 2000),
    port: Number(env.PORT ?? 8080),
    host: env.HOST ?? "127.0.0.1",
  };
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].split("=", 2);
    const value = inline ?? argv[++i];
    switch (flag) {
      case "--symbols": out.symbols = Number(value); break;
      case "--rate": out.rate = Number(value); break;
      case "--port": out.port = Number(value); break;
      case "--host": out.host = value; break;
      default: throw new Error(`unknown argument ${argv[i]}`);
    }
  }
  if (!(Number.isInteger(out.symbols) && out.symbols >= 1)) throw new Error("--symbols must be ≥ 1");
  if (!(out.rate > 0)) throw new Error("--rate must be > 0");
  if (!(Number.isInteger(out.port) && out.port >= 0 && out.port < 65536)) throw new Error("bad --port");
  return out;
}

// Wall clock in Unix-epoch nanoseconds as a BigInt. `performance.timeOrigin`
// is the wall time (µs resolution) at which `performance.now()` was 0, and
// `performance.now()` is monotonic; sampled once here, then advanced with
// `process.hrtime.bigint()` so every reading keeps full nanosecond precision.
const originNs = BigInt(Math.round((performance.timeOrigin + performance.now()) * 1e6));
const originHr = process.hrtime.bigint();
export function wallNs() {
  return originNs + (process.hrtime.bigint() - originHr);
}

function cents(c) {
  const whole = Math.floor(c / 100);
  const frac = c % 100;
  return `${whole}.${frac < 10 ? "0" : ""}${frac}`;
}

function size(bits) {
  const milli = 1 + (bits % 9999);
  const whole = Math.floor(milli / 1000);
  const frac = String(milli % 1000).padStart(3, "0");
  return `${whole}.${frac}`;
}

// xorshift32: fast and good enough for a made-up walk.
function rng(seed) {
  let x = seed >>> 0 || 0x9e3779b9;
  return () => {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    return x;
  };
}

// One symbol's top of book and its latest message.
class Book {
  constructor(name, random) {
    this.name = name;
    this.bid = 1000 + (random() % 99000);
    this.spread = 1 + (random() % 3);
    this.bidSize = "1.000";
    this.askSize = "1.000";
    this.last = null;
    this.lastSize = null;
    this.seq = 0;
    this.exchangeTs = 0n;
    this.ingestTs = 0n;
    // Everything up to and including `"skipped":`, shared by the live message
    // and the snapshot.
    this.prefix = null;
  }

  encode() {
    const last = this.last === null ? "null" : `"${this.last}"`;
    const lastSize = this.lastSize === null ? "null" : `"${this.lastSize}"`;
    this.prefix =
      `{"type":"ticker","symbol":"${this.name}","seq":${this.seq},` +
      `"bid":"${cents(this.bid)}","bid_size":"${this.bidSize}",` +
      `"ask":"${cents(this.bid + this.spread)}","ask_size":"${this.askSize}",` +
      `"last":${last},"last_size":${lastSize},` +
      `"exchange_ts_ns":${this.exchangeTs},"ingest_ts_ns":${this.ingestTs},"skipped":`;
  }

  // The live message (these peers never conflate: skipped is always 0).
  message() {
    return `${this.prefix}0,"snapshot":false}`;
  }

  // What a new subscriber gets first, or null before the first update.
  snapshot() {
    return this.prefix === null ? null : `${this.prefix}0,"snapshot":true}`;
  }
}

// The synthetic feed. `start(onUpdate)` calls `onUpdate(book)` for every update
// at a constant total rate: update k is due k / rate seconds after the start
// (its `exchange_ts_ns`); `ingest_ts_ns` is the wall clock when it is made, so
// end-to-end latency measured from it is the server's own (as tickwire's).
export class Feed {
  constructor({ symbols, rate, seed = 1, tradeEvery = 10 }) {
    const width = Math.max(3, String(symbols - 1).length);
    this.random = rng(seed);
    this.books = [];
    this.bySymbol = new Map();
    for (let i = 0; i < symbols; i++) {
      const book = new Book(`SYN${String(i).padStart(width, "0")}`, this.random);
      this.books.push(book);
      this.bySymbol.set(book.name, book);
    }
    this.rate = rate;
    this.tradeEvery = tradeEvery;
    this.emitted = 0;
    this.updates = 0;
  }

  start(onUpdate) {
    const startNs = wallNs();
    const startHr = process.hrtime.bigint();
    const ratePerNs = this.rate / 1e9;
    const loop = () => {
      const elapsedNs = Number(process.hrtime.bigint() - startHr);
      const due = Math.floor(elapsedNs * ratePerNs);
      // At most a second's worth per wake-up so a far-behind feed stays responsive.
      const n = Math.min(due - this.emitted, Math.max(1, Math.ceil(this.rate)));
      for (let i = 0; i < n; i++) {
        const k = ++this.emitted;
        const book = this.step(k);
        book.exchangeTs = startNs + BigInt(Math.ceil((k / this.rate) * 1e9));
        book.ingestTs = wallNs();
        book.seq += 1;
        book.encode();
        this.updates += 1;
        onUpdate(book);
      }
      const nextDueNs = ((this.emitted + 1) / this.rate) * 1e9;
      const wait = (nextDueNs - Number(process.hrtime.bigint() - startHr)) / 1e6;
      // Timers have 1 ms granularity; whatever came due meanwhile is caught up above.
      setTimeout(loop, Math.max(0, Math.min(100, wait)));
    };
    setTimeout(loop, 0);
  }

  step(k) {
    const random = this.random;
    const book = this.books[random() % this.books.length];
    const bits = random();
    if (this.tradeEvery > 0 && k % this.tradeEvery === 0) {
      book.last = cents((bits & 1) === 0 ? book.bid : book.bid + book.spread);
      book.lastSize = size(bits >>> 8);
    } else {
      book.bid = Math.max(1, book.bid + (bits % 5) - 2);
      book.spread = 1 + ((bits >>> 4) % 3);
      book.bidSize = size(bits >>> 8);
      book.askSize = size(random());
    }
    return book;
  }
}

// Protocol v1 client requests. Returns `{replies, subscribe, unsubscribe}`:
// messages to send, and symbols to (un)subscribe, already checked against `feed`.
export function handleRequest(feed, text) {
  let request;
  try {
    request = JSON.parse(text);
  } catch {
    return { replies: [errorReply(null, "bad_request", "invalid JSON")] };
  }
  if (request === null || typeof request !== "object") {
    return { replies: [errorReply(null, "bad_request", "expected an object")] };
  }
  const id = Number.isInteger(request.id) ? request.id : null;
  switch (request.op) {
    case "subscribe":
    case "unsubscribe": {
      if (!Array.isArray(request.symbols) || request.symbols.some((s) => typeof s !== "string")) {
        return { replies: [errorReply(id, "bad_request", "symbols must be an array of strings")] };
      }
      const known = request.symbols.filter((s) => feed.bySymbol.has(s));
      const unknown = request.symbols.filter((s) => !feed.bySymbol.has(s));
      const type = request.op === "subscribe" ? "subscribed" : "unsubscribed";
      const replies = [JSON.stringify({ type, id, channel: "ticker", symbols: known })];
      if (unknown.length > 0) {
        replies.push(errorReply(id, "unknown_symbol", "no such symbol", unknown));
      }
      return { replies, [request.op]: known };
    }
    case "list":
      return { replies: [JSON.stringify({ type: "symbols", id, symbols: [...feed.bySymbol.keys()] })] };
    case "ping":
      return { replies: [`{"type":"pong","id":${id},"server_ts_ns":${wallNs()}}`] };
    default:
      return { replies: [errorReply(id, "bad_request", "unknown op")] };
  }
}

function errorReply(id, code, message, symbols) {
  return JSON.stringify(symbols ? { type: "error", id, code, message, symbols } : { type: "error", id, code, message });
}

// The `symbols=A,B` query of a `/ws` URL, split into known symbols and the rest.
export function querySymbols(feed, url) {
  const raw = new URL(url, "http://localhost").searchParams.get("symbols");
  const names = raw ? raw.split(",").filter((s) => s.length > 0) : [];
  return names.filter((s) => feed.bySymbol.has(s));
}

// Prometheus text with the counters `tickwire bench` reads.
export function metricsPage({ updates, messagesOut, connections }) {
  return (
    "# TYPE tickwire_book_updates_total counter\n" +
    `tickwire_book_updates_total ${updates}\n` +
    "# TYPE tickwire_messages_out_total counter\n" +
    `tickwire_messages_out_total ${messagesOut}\n` +
    "# TYPE tickwire_connections gauge\n" +
    `tickwire_connections ${connections}\n`
  );
}
