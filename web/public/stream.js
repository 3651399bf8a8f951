// One WebSocket to /api/v1/ws following one channel at a time (docs/api.md, WebSocket).
// Reconnects with backoff and jitter and resubscribes with `since` (the page's newest bar), so the
// snapshot refills whatever was missed; a connection that stops answering pings is replaced.
// With an API key, the first message is {"op": "auth", "api_key"}: the key never goes in the URL
// (proxies log URLs).
import { apiKey } from "./api.js";
import { backoffDelay } from "./store.js";

const PING_EVERY_MS = 15000;
const SILENCE_MS = 25000;
const RETRY_CODES = new Set(["provider_unavailable", "dependency_unavailable", "rate_limited"]);
const POLICY_VIOLATION = 1008; // the server closes with it when the key is wrong, revoked or expired

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
    this.stop();
    this.sub = { selection, since };
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.subscribe();
    else if (!this.ws) this.connect();
  }

  // Follow nothing: the current channel is unsubscribed and its frames are no longer passed on
  // (the page is switching, or could not load what the pickers name).
  stop() {
    clearTimeout(this.timer);
    if (this.channel && this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.send({ op: "unsubscribe", channel: this.channel });
    }
    this.sub = null;
    this.channel = null;
    this.pending = null;
    this.attempt = 0;
  }

  // Only a stream that follows something has a state worth showing.
  state(state, detail = "") {
    if (this.sub) this.handlers.state(state, detail);
  }

  connect() {
    clearTimeout(this.timer);
    this.state(this.reconnects ? "reconnecting" : "connecting");
    const url = new URL("/api/v1/ws", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(url);
    this.ws = ws;
    ws.onopen = () => {
      this.lastFrameAt = Date.now();
      this.pinger = setInterval(() => this.heartbeat(), PING_EVERY_MS);
      if (apiKey()) this.send({ op: "auth", api_key: apiKey() });
      if (this.sub) this.subscribe();
    };
    ws.onmessage = (event) => this.receive(event.data);
    ws.onclose = (event) => this.closed(ws, event.code);
  }

  subscribe() {
    const since = this.sub.since();
    this.pending = `s${++this.counter}`;
    const message = { op: "subscribe", ...this.sub.selection, id: this.pending };
    if (since !== null) message.since = since;
    this.send(message);
  }

  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
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
      if (frame.code === "unauthorized") this.handlers.unauthorized(frame.message);
      else this.failed(frame);
      return;
    }
    if (!frame.channel || frame.channel !== this.channel) return; // pong, or an old channel
    if (frame.type === "snapshot") this.attempt = 0;
    this.handlers.frame(frame);
  }

  failed(frame) {
    if (!this.pending || frame.id !== this.pending) return;
    this.state("error", frame.message);
    if (RETRY_CODES.has(frame.code)) {
      this.timer = setTimeout(() => this.sub && this.subscribe(), backoffDelay(this.attempt++));
    }
  }

  closed(ws, code) {
    clearInterval(this.pinger);
    if (ws !== this.ws) return;
    this.ws = null;
    this.channel = null;
    if (code === POLICY_VIOLATION) { // a key the server refuses: ask for another, do not retry it
      this.handlers.unauthorized("the server closed the live stream: the API key was refused");
      return;
    }
    if (!this.sub) return; // following nothing: connect again when there is something to follow
    this.reconnects += 1;
    this.state("reconnecting");
    this.timer = setTimeout(() => this.connect(), backoffDelay(this.attempt++));
  }

  // A new key was given: start again with it.
  restart() {
    clearTimeout(this.timer);
    const ws = this.ws;
    this.ws = null;
    this.channel = null;
    if (ws) ws.close();
    if (this.sub) this.connect();
  }
}
