// One WebSocket to /api/v1/ws following one channel at a time (docs/api.md, WebSocket).
// Reconnects with backoff and jitter and resubscribes with `since` (the page's newest bar), so the
// snapshot refills whatever was missed; a connection that stops answering pings is replaced.
import { apiKey } from "./api.js";
import { backoffDelay } from "./store.js";

const PING_EVERY_MS = 15000;
const SILENCE_MS = 25000;
const RETRY_CODES = new Set(["provider_unavailable", "dependency_unavailable", "rate_limited"]);

export class Stream {
  // handlers: {frame(frame), state(state, detail)}
  constructor(handlers) {
    this.handlers = handlers;
    this.ws = null;
    this.sub = null; // {selection, since: () => ms | null}
    this.channel = null;
    this.pending = null;
    this.attempt = 0;
    this.counter = 0;
    this.timer = null;
    this.pinger = null;
    this.lastFrameAt = 0;
    this.reconnects = 0;
  }

  follow(selection, since) {
    if (this.channel && this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.send({ op: "unsubscribe", channel: this.channel });
    }
    this.sub = { selection, since };
    this.channel = null;
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.subscribe();
    else if (!this.ws) this.connect();
  }

  connect() {
    clearTimeout(this.timer);
    this.handlers.state(this.reconnects ? "reconnecting" : "connecting");
    const url = new URL("/api/v1/ws", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    if (apiKey()) url.searchParams.set("api_key", apiKey());
    const ws = new WebSocket(url);
    this.ws = ws;
    ws.onopen = () => {
      this.lastFrameAt = Date.now();
      this.pinger = setInterval(() => this.heartbeat(), PING_EVERY_MS);
      if (this.sub) this.subscribe();
    };
    ws.onmessage = (event) => this.receive(event.data);
    ws.onclose = () => this.closed(ws);
  }

  subscribe() {
    const since = this.sub.since();
    this.pending = `s${++this.counter}`;
    const message = { op: "subscribe", ...this.sub.selection, id: this.pending };
    if (since !== null) message.since = since;
    this.send(message);
  }

  send(message) {
    this.ws.send(JSON.stringify(message));
  }

  heartbeat() {
    if (Date.now() - this.lastFrameAt > SILENCE_MS) {
      this.ws.close(); // no pong: the network is gone without a close; start again
      return;
    }
    this.send({ op: "ping", id: "hb" });
  }

  receive(text) {
    this.lastFrameAt = Date.now();
    const frame = JSON.parse(text);
    if (frame.type === "subscribed" && frame.id === this.pending) {
      this.channel = frame.channel;
      return;
    }
    if (frame.type === "error") {
      this.failed(frame);
      return;
    }
    if (!frame.channel || frame.channel !== this.channel) return; // pong, or an old channel
    if (frame.type === "snapshot") this.attempt = 0;
    this.handlers.frame(frame);
  }

  failed(frame) {
    if (frame.id !== this.pending) return;
    this.handlers.state("error", frame.message);
    if (RETRY_CODES.has(frame.code)) {
      this.timer = setTimeout(() => this.sub && this.subscribe(), backoffDelay(this.attempt++));
    }
  }

  closed(ws) {
    clearInterval(this.pinger);
    if (ws !== this.ws) return;
    this.ws = null;
    this.channel = null;
    this.reconnects += 1;
    this.handlers.state("reconnecting");
    this.timer = setTimeout(() => this.connect(), backoffDelay(this.attempt++));
  }
}
