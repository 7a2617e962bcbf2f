// The SDK's reconnect pacing, without a browser: how long a client waits after each close.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { reconnectDelay, retryDelay } from '../../web/sdk/callpay.js';

test('a drained node\'s clients reconnect spread over the window it gives, not at once', () => {
  const reason = 'hub node stopping; reconnect within 5000 ms';
  assert.deepEqual(reconnectDelay(4012, reason, 0, () => 0), { wait: 0, failed: true });
  assert.deepEqual(reconnectDelay(4012, reason, 0, () => 0.5), { wait: 2500, failed: true });
  // Sent away again before any welcome: not a drain to trust, so the usual backoff.
  assert.deepEqual(reconnectDelay(4012, reason, 3, () => 1), { wait: 4000, failed: true });
  assert.ok(reconnectDelay(4012, reason, 0, () => 0.999).wait < 5000);
  // 1,000 clients land over the whole window, not in its first tenth.
  const waits = Array.from({ length: 1000 }, () => reconnectDelay(4012, reason, 0).wait);
  assert.ok(Math.max(...waits) > 4000 && Math.min(...waits) < 1000, `${Math.min(...waits)}..${Math.max(...waits)}`);
  // An older hub's reason without a window: the short default spread.
  assert.ok(reconnectDelay(4012, 'hub node stopping; reconnect now', 0, () => 0.999).wait < 100);
});

test('a shed join retries at its place in the hub\'s line, give or take half a second, and is not a failed attempt', () => {
  const reason = 'hub busy admitting joins; retry in 1200 ms';
  assert.deepEqual(reconnectDelay(4013, reason, 0, () => 0), { wait: 700, failed: false });
  assert.deepEqual(reconnectDelay(4013, reason, 0, () => 0.5), { wait: 1200, failed: false });
  assert.deepEqual(reconnectDelay(4013, reason, 0, () => 1), { wait: 1700, failed: false });
  // A late place keeps its order: a 10 s place is not spread over 5-15 s.
  const late = 'hub busy admitting joins; retry in 10000 ms';
  assert.equal(reconnectDelay(4013, late, 0, () => 0).wait, 9500);
  assert.equal(reconnectDelay(4013, late, 0, () => 1).wait, 10500);
  // A short retry is spread by at most half itself.
  assert.equal(reconnectDelay(4013, 'retry in 200 ms', 0, () => 0).wait, 100);
  // A hub's absurd figures are bounded: at most a minute in all, at least a tenth of a second.
  assert.equal(reconnectDelay(4013, 'retry in 99999999 ms', 0, () => 0).wait, 59500);
  assert.equal(reconnectDelay(4013, 'retry in 99999999 ms', 0, () => 0.999).wait, 60000);
  assert.equal(reconnectDelay(4013, 'retry in 0 ms', 0, () => 0).wait, 50);
  assert.ok(reconnectDelay(4012, 'reconnect within 0 ms', 0, () => 0.999).wait <= 100);
});

test('a shed join comes back with the ticket for its place, until it is admitted', async () => {
  const { CallpayClient } = await import('../../web/sdk/callpay.js');
  const opened = [];
  // Node 20 has no WebSocket: a stand-in that records where the client connects.
  globalThis.WebSocket = class { constructor(url) { opened.push(url); } };
  try {
    const client = new CallpayClient({ hubUrl: 'https://hub.test/', callId: 'c 1', token: 't' });
    const reconnectAfter = (code, reason) => {
      client.ws.onclose({ code, reason });
      assert.ok(client.timer, 'a reconnect is due');
      clearTimeout(client.timer);
      client.connect();
      return opened.at(-1);
    };
    client.connect();
    assert.equal(opened[0], 'wss://hub.test/v1/calls/c%201/ws');
    const shed = 'hub busy admitting joins; retry in 800 ms; ticket 1700000000000.00ff00ff00ff00ff';
    assert.equal(reconnectAfter(4013, shed), 'wss://hub.test/v1/calls/c%201/ws?ticket=1700000000000.00ff00ff00ff00ff');
    // Refused on the way (a balancer with no instance free): still in line.
    assert.match(reconnectAfter(1006, ''), /\?ticket=1700000000000\.00ff00ff00ff00ff$/);
    // Shed again: the newest ticket.
    assert.match(reconnectAfter(4013, 'hub busy admitting joins; retry in 250 ms; ticket 17.ab'), /\?ticket=17\.ab$/);
    // An older hub's reason has no ticket: none is sent.
    assert.equal(reconnectAfter(4013, 'hub busy admitting joins; retry in 800 ms'), 'wss://hub.test/v1/calls/c%201/ws');
    reconnectAfter(4013, shed);
    client.handle({ type: 'welcome', you: {}, participants: [], payments_available: true, payments: [] });
    assert.equal(reconnectAfter(1006, ''), 'wss://hub.test/v1/calls/c%201/ws', 'admitted: the ticket is spent');
  } finally {
    delete globalThis.WebSocket;
  }
});

test('any other close backs off exponentially with jitter', () => {
  assert.deepEqual(reconnectDelay(1006, '', 0, () => 1), { wait: 500, failed: true });
  assert.deepEqual(reconnectDelay(1006, '', 3, () => 1), { wait: 4000, failed: true });
  assert.equal(reconnectDelay(1006, '', 30, () => 1).wait, 10000, 'capped');
  assert.equal(reconnectDelay(4008, '', 0, () => 0).wait, 250, 'half the step at the least');
});

test('a clinician whose request was paid while it was away still gets the "payment received" notice', async () => {
  const { CallpayClient } = await import('../../web/sdk/callpay.js');
  const events = [];
  const client = new CallpayClient({ hubUrl: 'http://hub.test', callId: 'c1', token: 't', on: (e, d) => events.push([e, d]) });
  // Asked while the socket was down (or dropped before the hub's answer arrived): pending.
  const ref = client.request({ amount: 5000, description: 'Consult' });
  assert.ok(client.isPending(ref));
  const paid = { payment_id: 'pay_1', client_ref: ref, status: 'succeeded', version: 3, amount: 5000, currency: 'aud' };
  const welcome = { type: 'welcome', you: {}, participants: [], payments_available: true, payments: [paid] };
  client.handle(welcome);
  assert.ok(!client.isPending(ref), 'the welcome answers the request');
  const notices = events.filter(([e]) => e === 'confirmed');
  assert.equal(notices.length, 1, 'one notice for the request the page made');
  assert.equal(notices[0][1].payment_id, 'pay_1');
  // Once per payment: the next welcome repeats nothing.
  client.handle(welcome);
  assert.equal(events.filter(([e]) => e === 'confirmed').length, 1);
  // A payment this page never asked for nor saw unpaid (a page opened after it was paid):
  // no notice, as before.
  client.handle({ ...welcome, payments: [paid, { ...paid, payment_id: 'pay_2', client_ref: 'other' }] });
  assert.equal(events.filter(([e]) => e === 'confirmed').length, 1);
});

test('a request answered by a payment.sync that shows it paid gives the notice', async () => {
  const { CallpayClient } = await import('../../web/sdk/callpay.js');
  const events = [];
  const client = new CallpayClient({ hubUrl: 'http://hub.test', callId: 'c1', token: 't', on: (e, d) => events.push([e, d]) });
  const ref = client.request({ amount: 5000, description: 'Consult' });
  const paid = { payment_id: 'pay_1', client_ref: ref, status: 'succeeded', version: 3 };
  client.handle({ type: 'payment.sync', payments: [paid], confirmed: ['pay_1'] });
  assert.deepEqual(events.filter(([e]) => e === 'confirmed').map(([, p]) => p.payment_id), ['pay_1']);
});

test('a request the hub turned away as busy stays pending and goes again at the time given, once', async () => {
  const { CallpayClient } = await import('../../web/sdk/callpay.js');
  const sent = [];
  // Node 20 has no WebSocket: an open stand-in that records what the client sends.
  globalThis.WebSocket = class { static OPEN = 1; readyState = 1; send(text) { sent.push(JSON.parse(text)); } };
  try {
    const events = [];
    const client = new CallpayClient({ hubUrl: 'http://hub.test', callId: 'c1', token: 't', on: (e, d) => events.push([e, d]) });
    client.connect();
    client.handle({ type: 'welcome', you: {}, participants: [], payments_available: true, payments: [] });
    const ref = client.request({ amount: 5000, description: 'Consult' });
    assert.equal(sent.length, 1);
    client.handle({ type: 'error', code: 'busy', message: 'busy', ref, retry_after_ms: 120 });
    assert.ok(client.isPending(ref), 'not an answer: still pending');
    assert.deepEqual(events.filter(([e]) => e === 'request' || e === 'error'), [], 'nothing settled, no error shown');
    const busy = events.find(([e]) => e === 'busy')[1];
    assert.equal(busy.client_ref, ref);
    assert.ok(busy.wait >= 60 && busy.wait <= 180, `${busy.wait}`);
    await new Promise((r) => setTimeout(r, 250));
    assert.deepEqual(sent.map((m) => [m.type, m.client_ref]), [['payment.request', ref], ['payment.request', ref]], 'sent again under the same client_ref');
    // Turned away again, then a welcome on a new connection: the welcome sends it at once and
    // the waiting retry is dropped, so the hub gets it once more, not twice.
    client.handle({ type: 'error', code: 'busy', message: 'busy', ref, retry_after_ms: 100 });
    client.handle({ type: 'welcome', you: {}, participants: [], payments_available: true, payments: [] });
    await new Promise((r) => setTimeout(r, 250));
    assert.equal(sent.length, 3, 'the welcome sent it; the retry timer did not as well');
    // The answer settles it.
    client.handle({ type: 'payment.requested', payment: { payment_id: 'pay_1', client_ref: ref, status: 'requested', version: 1 } });
    assert.ok(!client.isPending(ref));
    assert.equal(events.filter(([e]) => e === 'request').length, 1);
    // A late busy for the answered request (a copy sent again) is not news; one for a payment
    // (a cancel) is shown as an error.
    client.handle({ type: 'error', code: 'busy', message: 'busy', ref, retry_after_ms: 500 });
    assert.equal(events.filter(([e]) => e === 'error').length, 0);
    client.handle({ type: 'error', code: 'busy', message: 'busy', ref: 'pay_1', retry_after_ms: 500 });
    assert.equal(events.filter(([e]) => e === 'error').length, 1);
    // Turned away, then asked again by the page at once: sent now, and the retry is dropped.
    const again = client.request({ amount: 6000, description: 'Second' });
    client.handle({ type: 'error', code: 'busy', message: 'busy', ref: again, retry_after_ms: 100 });
    client.request({ amount: 6000, description: 'Second', clientRef: again });
    const before = sent.length;
    await new Promise((r) => setTimeout(r, 250));
    assert.equal(sent.length, before, 'no second copy from the dropped retry');
    // A retry due while a new connection has not had its welcome waits for the welcome.
    client.handle({ type: 'error', code: 'busy', message: 'busy', ref: again, retry_after_ms: 100 });
    client.connect();
    await new Promise((r) => setTimeout(r, 250));
    assert.equal(sent.length, before, 'nothing sent before the welcome');
    client.handle({ type: 'welcome', you: {}, participants: [], payments_available: true, payments: [] });
    assert.equal(sent.length, before + 1, 'the welcome sends it');
  } finally {
    delete globalThis.WebSocket;
  }
});

test('a place the hub gives is kept give or take half a second, within bounds', () => {
  assert.equal(retryDelay(1200, () => 0.5), 1200);
  assert.equal(retryDelay(1200, () => 0), 700);
  assert.equal(retryDelay(300, () => 1), 450, 'a short wait moves by half itself at most');
  assert.equal(retryDelay(undefined, () => 0.5), 500, 'no figure: half a second');
  assert.equal(retryDelay(-5, () => 0.5), 100, 'never under a tenth of a second');
  assert.equal(retryDelay(1e12, () => 0.5), 60000, 'never over a minute');
});
