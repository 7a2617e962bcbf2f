// Pay by link: the patient's payment page outside the call. The link's token is in the URL
// fragment (never sent to servers) and goes to the hub as a bearer token. The page shows the
// one payment the link leads to, pays it with Stripe.js as the in-call page does (the same
// PaymentIntent: a link never makes a second charge), or says in the page's language why it
// cannot: expired, altered, cancelled, already paid, or a clinic that no longer takes it.
import { t, applyI18n, languageSwitch, money, when, decline } from '/web/i18n.js';
import { CardForm, el, loadStripe, paidDetails, resumeAfterRedirect } from '/web/cardform.js';

const $ = (id) => document.getElementById(id);

/** Whether Stripe just sent the patient back here after paying on another page. */
const returned = resumeAfterRedirect();
/** The link's token, from the fragment (read again if the fragment changes). */
let token = linkToken();

function linkToken() {
  return new URLSearchParams(location.hash.slice(1)).get('link') || '';
}
const config = await fetch('/v1/client-config').then((r) => r.json());
/** The hub's last answer for the link, or the code of why it leads nowhere. */
let view = null;
let problem = null;
/** Paying the link's payment: its card form (kept across renders, so typed details survive a
 * language switch), whether the page waits for the hub to hear of it, and whether it was paid
 * from this page (its confirmation then says "Payment complete", not "already paid"). */
const pay = { form: null, waiting: false, paidHere: false };
/** How long the page waits for the hub to hear of a payment Stripe.js finished (1 s apart). */
const CONFIRM_POLLS = 60;
/**
 * Which link the page is on: bumped when the fragment changes. Work begun for one link (its
 * load, Stripe.js loading for its form, the wait after a confirm) compares this when it
 * resumes and drops its result if the page has moved on, and the link's form is closed, so the
 * card form shown is always bound to the PaymentIntent of the link whose details are shown.
 */
let generation = 0;

async function ask(method, path, body) {
  try {
    const r = await fetch(path, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    const answer = await r.json().catch(() => ({}));
    return r.ok ? { view: answer } : { problem: answer.code || 'unavailable' };
  } catch (_) {
    return { problem: 'unavailable' };
  }
}

async function load(method = 'GET', path = '/v1/pay-link') {
  const gen = generation;
  const got = token ? await ask(method, path) : { problem: 'link_invalid' };
  if (gen !== generation) return { stale: true };
  view = got.view || null;
  problem = got.problem || null;
  $('loading').hidden = true;
  render();
  return got;
}

function notice(code) {
  // Codes the page has no words of its own for (a hub that is busy, links turned off) are
  // "cannot be opened right now".
  const known = ['link_expired', 'link_invalid', 'link_canceled', 'clinic_unavailable'];
  const key = known.includes(code) ? code : 'unavailable';
  const box = el('section', { class: 'card', 'data-state': key, role: 'alert' });
  box.append(el('h2', { class: 'error' }, t(`link.${key}.title`)), el('p', {}, t(`link.${key}.body`)));
  return box;
}

function confirmation(p, already) {
  const box = el('section', { class: 'card', 'data-state': 'paid', 'data-confirmation': p.payment_id });
  box.append(el('h2', { class: 'ok' }, already ? t('link.paid.title') : t('patient.done.title')));
  if (already) box.append(el('p', {}, t('link.paid.body')));
  box.append(...paidDetails(p));
  return box;
}

async function startPaying(p) {
  const gen = generation;
  const Stripe = await loadStripe(config.stripe_js_url);
  // Another link was opened while Stripe.js loaded: `p` is no longer the payment shown.
  if (gen !== generation) return;
  pay.form = new CardForm(Stripe, p, {
    changed: render,
    // The receipt callpay may send is written in the language the patient pays in.
    submitting: () => ask('PUT', '/v1/pay-link/language', { lang: document.documentElement.lang }),
    paid: () => {
      Object.assign(pay, { waiting: true, paidHere: true });
      render();
      waitForConfirmation();
    },
  });
  render();
  pay.form.focus();
}

async function waitForConfirmation() {
  // Stripe.js is done: the hub reads the PaymentIntent now, so the clinic's panel and records
  // hear of it at once; the page then shows what the hub stored.
  // Bound to the link it was started for: if the address moves to another link meanwhile, the
  // new link's page is that link's own, and this wait must neither poll it nor touch its form.
  const gen = generation;
  let got = await load('POST', '/v1/pay-link/submitted');
  for (let i = 0; i < CONFIRM_POLLS && got.view && got.view.state !== 'paid' && got.view.payment.status !== 'failed'; i += 1) {
    await new Promise((r) => setTimeout(r, 1000));
    if (gen !== generation) return;
    got = await load();
  }
  if (got.stale || gen !== generation) return;
  pay.waiting = false;
  const failed = got.view && got.view.payment.status === 'failed';
  if (failed && pay.form) pay.form.showError(t('patient.declined', { reason: decline(got.view.payment.failure) }));
  render();
}

function render() {
  const root = $('content');
  // The open form is moved, never rebuilt: Stripe's element and typed details stay.
  if (pay.form) pay.form.node.remove();
  root.innerHTML = '';
  if (problem) {
    root.append(notice(problem));
    return;
  }
  if (!view) return;
  const p = view.payment;
  if (view.state === 'paid') {
    root.append(confirmation(p, !pay.paidHere));
    return;
  }
  const card = el('article', { class: 'card', 'data-payment-id': p.payment_id, 'data-state': view.state });
  card.append(
    el('div', { class: 'amount' }, money(p.amount, p.currency)),
    el('p', {}, p.description),
    el('p', { class: 'muted' }, t('patient.from', { name: p.requested_by.name, clinic: view.clinic_name })),
  );
  if (view.state === 'confirming' || pay.waiting) {
    card.append(el('p', { role: 'status' }, t('patient.waiting')));
  } else if (pay.form && p.stripe) {
    pay.form.refresh(p);
    card.append(pay.form.node);
  } else if (p.stripe) {
    card.append(el('p', { class: 'muted', 'data-role': 'valid-until' }, t('link.valid_until', { time: when(view.expires_at * 1000) })));
    if (p.status === 'failed') card.append(el('p', { class: 'error' }, t('patient.declined', { reason: decline(p.failure) })));
    const btn = el('button', { type: 'button', 'data-role': 'pay-now' }, t('patient.paynow'));
    btn.addEventListener('click', () => startPaying(p));
    card.append(btn);
  }
  root.append(card);
}

languageSwitch($('lang'), render);
applyI18n();
if (returned) {
  // Stripe finished on another page (the bank's) and sent the patient back: as after a confirm
  // in this page, the hub reads the PaymentIntent now and the page waits for its answer.
  Object.assign(pay, { waiting: true, paidHere: true });
  waitForConfirmation();
} else {
  load();
}
// Another link pasted into the same tab: show that one, from scratch.
window.addEventListener('hashchange', () => {
  generation += 1;
  token = linkToken();
  if (pay.form) pay.form.close();
  Object.assign(pay, { form: null, waiting: false, paidHere: false });
  load();
});
window.callpayLink = { reload: () => load() };
