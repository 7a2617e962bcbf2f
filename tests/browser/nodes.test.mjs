// Two hub instances over a Redis of the test's own (`callpay demo --nodes 2`): the clinician on
// one, the patient on the other, where Stripe's webhooks land. Redis stops; the patient pays;
// Redis comes back. The clinician still gets the payment-received pop-up, once (issue 17: a
// change the far instance learns of only by repairing from the store is the event it was).
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { browser, page, shot, startDemo, clinicianUrl, patientUrl, requestPayment, pay } from './harness.mjs';

let b;
before(async () => { b = await browser(); });
after(async () => { await b?.close(); });

/** A free loopback port. */
function freePort() {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

/** A Redis server on `port` that the test can stop and start again. */
async function redisOn(port) {
  const proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  for (let i = 0; i < 100; i++) {
    const up = await new Promise((resolve) => {
      const c = createServer().once('error', () => resolve(true)).listen(port, '127.0.0.1', () => c.close(() => resolve(false)));
    });
    if (up) return proc;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('redis-server did not start');
}

async function stop(proc) {
  proc.kill('SIGKILL');
  await new Promise((r) => (proc.exitCode !== null || proc.signalCode !== null ? r() : proc.on('exit', r)));
}

test('a payment confirmed while Redis is down still pops up for the clinician on the other instance, once', async () => {
  const port = await freePort();
  let redis = await redisOn(port);
  const demo = await startDemo({ args: ['--nodes', '2', '--redis-url', `redis://127.0.0.1:${port}/`] });
  try {
    const { info } = demo;
    assert.equal(info.hub_urls.length, 2);
    const doc = await page(b);
    const pat = await page(b);
    // The clinician on the second instance; the patient on the first (Stripe's webhooks land there).
    await doc.goto(clinicianUrl({ ...info, hub_url: info.hub_urls[1] }));
    await pat.goto(patientUrl(info));
    await doc.getByText('Live').waitFor();
    await requestPayment(doc, '42.00', 'Across instances');
    await pat.locator('article', { hasText: 'Across instances' }).getByRole('button', { name: 'Pay Now' }).waitFor();

    await stop(redis);
    const item = await pay(pat, 'Across instances', '4242 4242 4242 4242');
    await item.getByText('Payment complete').waitFor({ timeout: 15000 });
    await new Promise((r) => setTimeout(r, 3000));
    assert.equal(await doc.getByRole('region', { name: 'Payment received' }).count(), 0, 'no pop-up while Redis is down');
    redis = await redisOn(port);

    const popup = doc.getByRole('region', { name: 'Payment received' });
    await popup.getByText('Payment received').waitFor({ timeout: 30000 });
    await shot(doc, 'nodes-1-clinician-popup-after-redis-outage');
    // Once: closed, it does not come back (a second notice would show it again).
    await popup.getByRole('button', { name: 'Close' }).click();
    await new Promise((r) => setTimeout(r, 3000));
    assert.equal(await popup.count(), 0, 'the payment-received notice came a second time');
    await doc.getByText('Paid', { exact: true }).waitFor();
  } finally {
    await demo.stop();
    await stop(redis);
  }
});
