// Bun peer: Bun's built-in WebSocket pub/sub (uWebSockets inside). Each client
// `ws.subscribe(symbol)`s; every feed update is one `server.publish(symbol,
// message)`, which uWS fans out to the topic's subscribers in native code.
//
//   bun benches/peers/bun/server.js --symbols 100 --rate 2000 --port 8080
//
// Speaks the part of protocol v1 that `tickwire bench` uses: GET /ws (with
// ?symbols=A,B), subscribe/unsubscribe/list/ping, ticker messages with
// snapshot-on-subscribe, and GET /metrics. Never conflates (skipped is 0).
import { Feed, handleRequest, metricsPage, querySymbols, settings } from "../common/synthetic.mjs";

const config = settings();
const feed = new Feed(config);
// Subscribers per topic, to count messages out without asking uWS per publish.
const subscribers = new Map();
let messagesOut = 0;
let connections = 0;

function subscribe(ws, symbols) {
  for (const symbol of symbols) {
    if (ws.isSubscribed(symbol)) continue;
    // Snapshot first, then join the topic: JS is single-threaded, so no publish
    // can fall between the two.
    const snapshot = feed.bySymbol.get(symbol).snapshot();
    if (snapshot !== null) {
      ws.send(snapshot);
      messagesOut++;
    }
    ws.subscribe(symbol);
    subscribers.set(symbol, (subscribers.get(symbol) ?? 0) + 1);
  }
}

function unsubscribe(ws, symbols) {
  for (const symbol of symbols) {
    if (!ws.isSubscribed(symbol)) continue;
    ws.unsubscribe(symbol);
    subscribers.set(symbol, subscribers.get(symbol) - 1);
  }
}

const server = Bun.serve({
  hostname: config.host,
  port: config.port,
  fetch(req, server) {
    const url = new URL(req.url);
    if (url.pathname === "/ws") {
      const symbols = querySymbols(feed, req.url);
      if (server.upgrade(req, { data: { symbols, topics: new Set() } })) return undefined;
      return new Response('{"error":"bad_request","message":"expected a WebSocket upgrade"}', { status: 400 });
    }
    if (url.pathname === "/metrics") {
      return new Response(metricsPage({ updates: feed.updates, messagesOut, connections }), {
        headers: { "content-type": "text/plain; version=0.0.4" },
      });
    }
    return new Response("not found\n", { status: 404 });
  },
  websocket: {
    perMessageDeflate: false,
    open(ws) {
      connections++;
      const symbols = ws.data.symbols;
      if (symbols.length > 0) {
        ws.send(JSON.stringify({ type: "subscribed", id: null, channel: "ticker", symbols }));
        messagesOut++;
        subscribe(ws, symbols);
        for (const s of symbols) ws.data.topics.add(s);
      }
    },
    message(ws, message) {
      if (typeof message !== "string") {
        ws.close(1003, "binary frames are not part of v1");
        return;
      }
      const result = handleRequest(feed, message);
      if (result.unsubscribe) {
        unsubscribe(ws, result.unsubscribe);
        for (const s of result.unsubscribe) ws.data.topics.delete(s);
      }
      for (const reply of result.replies) {
        ws.send(reply);
        messagesOut++;
      }
      if (result.subscribe) {
        subscribe(ws, result.subscribe);
        for (const s of result.subscribe) ws.data.topics.add(s);
      }
    },
    close(ws) {
      connections--;
      // uWS drops a closed socket's subscriptions itself; keep the counts right.
      for (const symbol of ws.data.topics) {
        subscribers.set(symbol, subscribers.get(symbol) - 1);
      }
    },
  },
});

feed.start((book) => {
  server.publish(book.name, book.message());
  messagesOut += subscribers.get(book.name) ?? 0;
});

console.log(
  `bun ${Bun.version} peer: ${config.symbols} symbols at ${config.rate}/s, ws://${server.hostname}:${server.port}/ws`,
);
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => {
    server.stop(true);
    process.exit(0);
  });
}
