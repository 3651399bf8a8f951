// Unit tests of web/public/store.js under node's own test runner (run by tests/blueprints/test_page_frames.py).
import assert from "node:assert/strict";
import { test } from "node:test";

import { BarStore, backoffDelay, formatVolume, retryWait } from "../../web/public/store.js";

const MIN = 60000;
const row = (minute, close, volume = 1) => [minute * MIN, 10, 12, 9, close, volume];

test("a first page marks every bar closed but a bucket still open", () => {
  const store = new BarStore(MIN);
  const now = Date.now();
  const current = Math.floor(now / MIN);
  store.reset([row(current - 2, 11), row(current - 1, 11), row(current, 11)]);
  assert.deepEqual(store.bars.map((b) => b.closed), [true, true, false]);
  assert.equal(store.first.time, (current - 2) * 60);
});

test("frames: update the forming bar, append, revise in place, insert, ignore what is stale", () => {
  const store = new BarStore(MIN);
  store.reset([row(1, 11), row(2, 11), row(3, 11)]);
  store.bars[2].closed = false;
  assert.equal(store.apply(row(3, 12), false), "last");
  assert.equal(store.last.close, 12);
  assert.equal(store.apply(row(4, 13), false), "append");
  assert.equal(store.bars[2].closed, true, "a newer bucket closes the one before");
  assert.equal(store.apply(row(2, 5), true), "history");
  assert.equal(store.bars[1].close, 5);
  store.bars.splice(1, 1);
  assert.equal(store.apply(row(2, 6), true), "insert");
  assert.deepEqual(store.bars.map((b) => b.time), [60, 120, 180, 240]);
  assert.equal(store.apply(row(0, 1), true), "none", "before the loaded history");
  assert.equal(store.apply(row(4, 14), true), "last");
  assert.equal(store.apply(row(4, 15), false), "none", "a closed bar never reopens");
  assert.equal(store.last.close, 14);
});

test("prepend keeps only older bars and says how many", () => {
  const store = new BarStore(MIN);
  store.reset([row(5, 1), row(6, 1)]);
  assert.equal(store.prepend([row(3, 1), row(4, 1), row(5, 9)]), 2);
  assert.deepEqual(store.bars.map((b) => b.time / 60), [3, 4, 5, 6]);
  assert.equal(store.bars[2].close, 1);
  assert.equal(store.prepend([]), 0);
});

test("indexOf finds a time or where it would go", () => {
  const store = new BarStore(MIN);
  store.reset([row(1, 1), row(3, 1), row(5, 1)]);
  assert.equal(store.indexOf(180), 1);
  assert.equal(store.indexOf(240), -3);
});

test("backoff doubles to its cap, half of each wait random", () => {
  assert.deepEqual([0, 1, 2, 5, 20].map((n) => backoffDelay(n, 500, 15000, () => 0)), [250, 500, 1000, 7500, 7500]);
  assert.deepEqual([0, 1, 2, 5, 20].map((n) => backoffDelay(n, 500, 15000, () => 1)), [500, 1000, 2000, 15000, 15000]);
  const spread = new Set(Array.from({ length: 50 }, () => backoffDelay(3)));
  assert.ok(spread.size > 10, "jitter spreads the clients");
});

test("a retry waits the backoff, or longer when the server's Retry-After says so (capped)", () => {
  const none = () => 0;
  assert.deepEqual([0, 1, 2, 10].map((n) => retryWait(n, null, 1000, 30000, 300, none)), [500, 1000, 2000, 15000]);
  assert.equal(retryWait(0, 7, 1000, 30000, 300, none), 7000);
  assert.equal(retryWait(4, 7, 1000, 30000, 300, none), 8000);
  assert.equal(retryWait(0, 3600, 1000, 30000, 300, none), 300000, "an hour's Retry-After is capped");
});

test("the legend's volumes: digits, then K, M and B", () => {
  assert.deepEqual([12.345678, 9999, 12345, 2.5e6, 3.25e9].map(formatVolume), ["12.3457", "9,999", "12.35K", "2.50M", "3.25B"]);
});
