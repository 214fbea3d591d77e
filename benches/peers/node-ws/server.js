// Node peer: the `ws` package used the idiomatic way. A Map from symbol to the
// Set of subscribed clients; every feed update is `client.send(message)` to each
// subscriber, no conflation (a slow client's backlog grows in its socket buffer).
//
//   node benches/peers/node-ws/server.js --symbols 100 --rate 2000 --port 8080
//
// Speaks the part of protocol v1 that `tickwire bench` uses: GET /ws (with
// ?symbols=A,B), subscribe/unsubscribe/list/ping, ticker messages with
// snapshot-on-subscribe, and GET /metrics.
import http from "node:http";
import { createRequire } from "node:module";
import { Feed, handleRequest, metricsPage, querySymbols, settings } from "../common/synthetic.mjs";

const require = createRequire(import.meta.url);
const { WebSocketServer, WebSocket } = require("ws");

const config = settings();
const feed = new Feed(config);
/** @type {Map<string, Set<WebSocket>>} */
const subscribers = new Map(feed.books.map((b) => [b.name, new Set()]));
let messagesOut = 0;
let connections = 0;

function send(ws, text) {
  ws.send(text);
  messagesOut++;
}

function subscribe(ws, symbols) {
  for (const symbol of symbols) {
    const set = subscribers.get(symbol);
    if (set.has(ws)) continue;
    const snapshot = feed.bySymbol.get(symbol).snapshot();
    if (snapshot !== null) send(ws, snapshot);
    set.add(ws);
  }
}

function unsubscribe(ws, symbols) {
  for (const symbol of symbols) subscribers.get(symbol).delete(ws);
}

const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });

wss.on("connection", (ws, req) => {
  connections++;
  const symbols = querySymbols(feed, req.url);
  if (symbols.length > 0) {
    send(ws, JSON.stringify({ type: "subscribed", id: null, channel: "ticker", symbols }));
    subscribe(ws, symbols);
  }
  ws.on("message", (data, isBinary) => {
    if (isBinary) {
      ws.close(1003, "binary frames are not part of v1");
      return;
    }
    const result = handleRequest(feed, data.toString());
    if (result.unsubscribe) unsubscribe(ws, result.unsubscribe);
    for (const reply of result.replies) send(ws, reply);
    if (result.subscribe) subscribe(ws, result.subscribe);
  });
  ws.on("error", () => {});
  ws.on("close", () => {
    connections--;
    for (const set of subscribers.values()) set.delete(ws);
  });
});

const server = http.createServer((req, res) => {
  const path = req.url.split("?")[0];
  if (path === "/metrics") {
    res.writeHead(200, { "content-type": "text/plain; version=0.0.4" });
    res.end(metricsPage({ updates: feed.updates, messagesOut, connections }));
    return;
  }
  res.writeHead(404).end("not found\n");
});

server.on("upgrade", (req, socket, head) => {
  if (req.url.split("?")[0] !== "/ws") {
    socket.end("HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n");
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit("connection", ws, req));
});

feed.start((book) => {
  const message = book.message();
  for (const ws of subscribers.get(book.name)) {
    if (ws.readyState === WebSocket.OPEN) send(ws, message);
  }
});

server.listen(config.port, config.host, () => {
  const { address, port } = server.address();
  console.log(`node ${process.version} ws peer: ${config.symbols} symbols at ${config.rate}/s, ws://${address}:${port}/ws`);
});
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => process.exit(0));
}
