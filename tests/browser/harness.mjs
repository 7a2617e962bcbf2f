// Test harness: starts `callpay demo` (hub + SQLite + Stripe simulator) on free loopback ports,
// launches Debian's Chromium through playwright-core, and saves screenshots under
// target/browser-artifacts/ so a person can look at what each test saw.
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const ARTIFACTS = join(ROOT, 'target', 'browser-artifacts');
mkdirSync(ARTIFACTS, { recursive: true });
const BINARY = process.env.CALLPAY_BIN || join(ROOT, 'target', 'debug', 'callpay');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

/** Starts a demo (with `args` added, e.g. `--nodes 2 --redis-url …`) and resolves with its
 * CALLPAY_DEMO info once it is ready. */
export async function startDemo({ args = [] } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'callpay-browser-'));
  const proc = spawn(BINARY, ['demo', '--data-dir', dir, '--listen', '127.0.0.1:0', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  proc.stderr.on('data', (d) => { stderr += d; });
  const info = await new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`demo did not start in 30 s: ${stderr}`)), 30000);
    proc.stdout.on('data', (d) => {
      out += d;
      // Only whole lines: a chunk can end in the middle of the JSON.
      const line = out.split('\n').slice(0, -1).find((l) => l.startsWith('CALLPAY_DEMO '));
      if (line) {
        clearTimeout(timer);
        resolve(JSON.parse(line.slice('CALLPAY_DEMO '.length)));
      }
    });
    proc.on('exit', (code) => reject(new Error(`demo exited with ${code}: ${stderr}`)));
  });
  return {
    info,
    async stop() {
      proc.kill('SIGTERM');
      await new Promise((r) => (proc.exitCode !== null ? r() : proc.on('exit', r)));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Launches headless Chromium with the flags this machine needs (no network beyond loopback). */
export async function browser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  });
}

/** A new page with its own context; `lang` sets the browser's language. */
export async function page(b, { lang = 'en-AU', width = 1000, height = 900 } = {}) {
  const context = await b.newContext({ locale: lang, viewport: { width, height } });
  const p = await context.newPage();
  p.on('pageerror', (e) => { p.lastError = e; console.error('page error:', e.message); });
  return p;
}

export async function shot(p, name) {
  await p.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
}

export function clinicianUrl(info, extra = '') {
  return `${info.hub_url}/call/clinician${extra}#call=${info.call_id}&token=${info.clinician_token}`;
}

export function patientUrl(info, extra = '') {
  return `${info.hub_url}/call/patient${extra}#call=${info.call_id}&token=${info.patient_token}`;
}

/** The clinician requests `dollars` for `description`. */
export async function requestPayment(doc, dollars, description) {
  await doc.getByLabel('Amount (AUD)').fill(dollars);
  await doc.getByLabel('Description').fill(description);
  await doc.getByRole('button', { name: 'Request Payment' }).click();
}

/** The pay form's button and field labels, by page language. */
const PAY_LABELS = {
  en: { payNow: 'Pay Now', email: 'Email for your receipt', number: 'Card number', expiry: 'Expiry (MM / YY)', cvc: 'Security code (CVC)' },
  bn: { payNow: 'এখনই পরিশোধ করুন', email: 'রসিদের জন্য ইমেইল', number: 'কার্ড নম্বর', expiry: 'মেয়াদ (মাস / বছর)', cvc: 'নিরাপত্তা কোড (CVC)' },
};

/** The patient opens the request `description` and pays with `card` (labels in `lang`). */
export async function pay(pat, description, card, { email = 'sam@example.com', open = true, lang = 'en' } = {}) {
  const l = PAY_LABELS[lang];
  const item = pat.locator('article', { hasText: description });
  if (open) await item.getByRole('button', { name: l.payNow }).click();
  await item.getByLabel(l.email).fill(email);
  await item.getByLabel(l.number).fill(card);
  await item.getByLabel(l.expiry).fill('12/34');
  await item.getByLabel(l.cvc).fill('123');
  await item.locator('button[data-role=pay]').click();
  return item;
}

/** The `return_url` of each PaymentIntent confirm page `p` sends to the simulator, as sent
 * (filled in as the requests go out). */
export function returnUrlsSent(p, info) {
  const seen = [];
  p.on('request', (r) => {
    if (r.method() === 'POST' && r.url().startsWith(`${info.stripe_url}/v1/payment_intents/`) && r.url().endsWith('/confirm')) {
      seen.push(new URLSearchParams(r.postData() || '').get('return_url'));
    }
  });
  return seen;
}

/** Sets faults on the demo's Stripe simulator (its control API takes the simulator's key). */
export async function simFaults(info, faults) {
  const r = await fetch(`${info.stripe_url}/_sim/faults`, {
    method: 'POST',
    headers: { authorization: `Bearer ${info.stripe_secret_key}`, 'content-type': 'application/json' },
    body: JSON.stringify(faults),
  });
  if (r.status !== 200) throw new Error(`simulator faults answered ${r.status}`);
}

/** Runs `fn(info)` against a fresh demo, stopping it afterwards whatever happens. */
export async function withDemo(fn) {
  const demo = await startDemo();
  try {
    await fn(demo.info);
  } finally {
    await demo.stop();
  }
}

/** A fresh demo with the clinician's and the patient's panels open. */
export async function inCall(b, fn, { lang, patientViewport } = {}) {
  await withDemo(async (info) => {
    const doc = await page(b, lang ? { lang } : {});
    const pat = await page(b, { ...(lang ? { lang } : {}), ...(patientViewport || {}) });
    await doc.goto(clinicianUrl(info));
    await pat.goto(patientUrl(info));
    await fn({ info, doc, pat });
  });
}
