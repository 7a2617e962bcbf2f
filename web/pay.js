// Pay by link: the patient's payment page outside the call. The link's token is in the URL
// fragment (never sent to servers) and goes to the hub as a bearer token. The page shows the
// one payment the link leads to, pays it with Stripe.js as the in-call page does (the same
// PaymentIntent: a link never makes a second charge), or says in the page's language why it
// cannot: expired, altered, cancelled, already paid, or a clinic that no longer takes it.
import { t, applyI18n, languageSwitch, money, when, brand, decline } from '/web/i18n.js';
import { returnUrl, forgetReturn, resumeAfterRedirect } from '/web/cardform.js';

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
/** The pay form's state, kept across renders so typed details survive a language switch. */
const pay = { elements: null, stripe: null, busy: false, error: '', waiting: false, form: null, paidHere: false };
/** How long the page waits for the hub to hear of a payment Stripe.js finished (1 s apart). */
const CONFIRM_POLLS = 60;
/**
 * Which link the page is on: bumped when the fragment changes. Work begun for one link (its
 * load, Stripe.js loading for its form, a confirm, the wait after it) compares this when it
 * resumes and drops its result if the page has moved on, so the card form shown is always
 * bound to the PaymentIntent of the link whose details are shown.
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

function el(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function loadStripe() {
  return new Promise((resolve, reject) => {
    if (window.Stripe) return resolve(window.Stripe);
    const s = document.createElement('script');
    s.src = config.stripe_js_url;
    s.onload = () => resolve(window.Stripe);
    s.onerror = () => reject(new Error('Stripe.js could not be loaded'));
    document.head.appendChild(s);
  });
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
  const dl = el('dl', { class: 'details' });
  const rows = [
    ['patient.done.amount', money(p.amount_received || p.amount, p.currency)],
    ['patient.done.description', p.description],
    ['patient.done.date', when(p.paid_at || p.updated_at)],
    ['patient.done.card', p.card_last4 ? `${brand(p.card_brand)} •••• ${p.card_last4}` : '—'],
    ['patient.done.receipt', p.receipt_email || '—'],
    ['patient.done.reference', p.reference || p.payment_id],
  ];
  for (const [k, v] of rows) dl.append(el('dt', {}, t(k)), el('dd', {}, v));
  box.append(dl);
  if (p.receipt_email) box.append(el('p', { class: 'muted', 'data-role': 'stripe-receipt' }, t('patient.done.stripe_receipt', { email: p.receipt_email })));
  return box;
}

async function startPaying(p) {
  const gen = generation;
  const Stripe = await loadStripe();
  if (gen !== generation) return;
  pay.stripe = Stripe(p.stripe.publishable_key, { stripeAccount: p.stripe.stripe_account, locale: document.documentElement.lang });
  pay.elements = pay.stripe.elements({ clientSecret: p.stripe.client_secret, locale: document.documentElement.lang });
  render();
  const email = document.getElementById('email');
  if (email) email.focus();
}

async function waitForConfirmation() {
  // Stripe.js is done: the hub reads the PaymentIntent now, so the clinic's panel and records
  // hear of it at once; the page then shows what the hub stored.
  let got = await load('POST', '/v1/pay-link/submitted');
  for (let i = 0; i < CONFIRM_POLLS && got.view && got.view.state !== 'paid' && got.view.payment.status !== 'failed'; i += 1) {
    await new Promise((r) => setTimeout(r, 1000));
    got = await load();
  }
  if (got.stale) return;
  pay.waiting = false;
  if (got.view && got.view.payment.status === 'failed') pay.error = t('patient.declined', { reason: decline(got.view.payment.failure) });
  render();
}

function payForm(p) {
  if (!pay.form) {
    const gen = generation;
    const form = el('form', { novalidate: '' });
    pay.emailLabel = el('label', { for: 'email' });
    const email = el('input', { id: 'email', type: 'email', autocomplete: 'email', required: '' });
    pay.cardCaption = el('p', { class: 'muted' });
    const mount = el('div', { id: 'card' });
    pay.errEl = el('p', { class: 'error', role: 'alert', 'data-role': 'pay-error' });
    pay.btn = el('button', { type: 'submit', 'data-role': 'pay' });
    form.append(pay.emailLabel, email, pay.cardCaption, mount, pay.errEl, pay.btn);
    pay.element = pay.elements.create('payment');
    pay.element.mount(mount);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      if (pay.busy) return;
      if (!/^[^\s@]+@[^\s@]+\.[^\s@]+$/.test(email.value)) {
        pay.error = t('patient.email.invalid');
        render();
        email.focus();
        return;
      }
      pay.busy = true;
      pay.error = '';
      render();
      // The receipt callpay may send is written in the language the patient pays in.
      await ask('PUT', '/v1/pay-link/language', { lang: document.documentElement.lang });
      // Another link was opened meanwhile: this form is gone from the page, so pay nothing.
      if (gen !== generation) return;
      const result = await pay.stripe.confirmPayment({
        elements: pay.elements,
        confirmParams: { receipt_email: email.value, return_url: returnUrl(p.stripe.client_secret) },
        redirect: 'if_required',
      });
      // Stripe.js answered, so no redirect happened: the fragment kept for one is not needed.
      forgetReturn(p.stripe.client_secret);
      if (gen !== generation) return;
      pay.busy = false;
      if (result.error) {
        pay.error = t('patient.declined', { reason: decline(result.error) });
        render();
      } else {
        pay.waiting = true;
        pay.paidHere = true;
        render();
        waitForConfirmation();
      }
    });
    pay.form = form;
  }
  pay.elements.update({ locale: document.documentElement.lang });
  pay.emailLabel.textContent = t('patient.email');
  pay.cardCaption.textContent = t('patient.card');
  pay.errEl.textContent = pay.error;
  pay.btn.textContent = pay.busy ? t('patient.paying') : t('patient.pay', { amount: money(p.amount, p.currency) });
  pay.btn.disabled = pay.busy;
  return pay.form;
}

function render() {
  const root = $('content');
  // The open form is moved, never rebuilt: Stripe's element and typed details stay.
  const keep = pay.form && pay.form.parentNode ? pay.form : null;
  if (keep) keep.remove();
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
  } else if (pay.elements && p.stripe) {
    card.append(payForm(p));
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
  Object.assign(pay, { elements: null, stripe: null, busy: false, error: '', waiting: false, form: null, paidHere: false });
  load();
});
window.callpayLink = { reload: () => load() };
