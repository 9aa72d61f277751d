import assert from 'node:assert/strict';
import { test } from 'node:test';
import { backoffDelay, restartDelay, restartWindowHint, retryAfterHint } from '../src/index.js';

const bounds = { baseMs: 500, maxMs: 30_000 };

// A seeded generator (mulberry32), so the distribution test is the same on every run.
function seeded(seed) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

test('the window doubles from baseMs and stops at maxMs', () => {
  const top = () => 1 - Number.EPSILON;
  const delays = Array.from({ length: 9 }, (_, attempt) => backoffDelay(attempt, bounds, top));
  assert.deepEqual(delays, [499, 999, 1999, 3999, 7999, 15999, 29999, 29999, 29999]);
});

test('full jitter: the lowest draw waits nothing, at any attempt', () => {
  for (const attempt of [0, 3, 20]) assert.equal(backoffDelay(attempt, bounds, () => 0), 0);
});

test('huge attempt counts stay at the cap (no Infinity or NaN)', () => {
  assert.equal(backoffDelay(5000, bounds, () => 0.5), 15_000);
  assert.equal(backoffDelay(-1, bounds, () => 0.5), 250);
});

test('delays spread over the whole window, not just its upper half', () => {
  const random = seeded(42);
  const samples = Array.from({ length: 2000 }, () => backoffDelay(3, bounds, random));
  assert.ok(samples.every((d) => d >= 0 && d < 4000));
  const mean = samples.reduce((a, b) => a + b, 0) / samples.length;
  assert.ok(Math.abs(mean - 2000) < 150, `mean ${mean}`);
  assert.ok(samples.some((d) => d < 400), 'equal jitter would never go below 2000');
});

test('retry-after hints in close reasons', () => {
  assert.equal(retryAfterHint('retry-after=5'), 5000);
  assert.equal(retryAfterHint('server full; Retry-After: 1.5'), 1500);
  assert.equal(retryAfterHint('RETRY-AFTER = 30'), 30_000);
  assert.equal(retryAfterHint(''), undefined);
  assert.equal(retryAfterHint('going away'), undefined);
  assert.equal(retryAfterHint('retry-after=soon'), undefined);
  assert.equal(retryAfterHint(undefined), undefined);
});

test('a restart window is read from the close reason, in seconds', () => {
  assert.deepEqual(restartWindowHint('server restarting; retry in 1-10s'), { minMs: 1000, maxMs: 10_000 });
  assert.deepEqual(restartWindowHint('Retry in 0.25 - 1.5 s'), { minMs: 250, maxMs: 1500 });
  for (const none of ['server shutting down', 'retry in 10-1s', 'retry in 1-10ms', 'retry-after=5', '', undefined]) {
    assert.equal(restartWindowHint(none), undefined, String(none));
  }
});

test('restart delays spread uniformly over [minMs, maxMs)', () => {
  const random = seeded(7);
  const window = { minMs: 1000, maxMs: 10_000 };
  const samples = Array.from({ length: 2000 }, () => restartDelay(window, random));
  assert.ok(samples.every((d) => d >= 1000 && d < 10_000));
  const mean = samples.reduce((a, b) => a + b, 0) / samples.length;
  assert.ok(Math.abs(mean - 5500) < 300, `mean ${mean}`);
  assert.equal(restartDelay({ minMs: 500, maxMs: 500 }, () => 0.9), 500);
});
