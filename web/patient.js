// Patient panel: a request appears at once; Pay Now opens e-mail + Stripe's Payment Element
// (Stripe.js loaded from the configured URL: Stripe's in production, the simulator offline).
// Card details go from Stripe.js to Stripe; this page only ever sees the outcome.
import { CallpayClient, launchParams } from '/web/sdk/callpay.js';
import { t, applyI18n, languageSwitch, money, when, brand, decline } from '/web/i18n.js';
import { returnUrl, forgetReturn, resumeAfterRedirect } from '/web/cardform.js';

const $ = (id) => document.getElementById(id);
// Back from a Stripe redirect, the join token is put back in the fragment before it is read;
// the panel then reconnects, and checkIntent tells the hub what Stripe says of the payment.
resumeAfterRedirect();
const { token, callId } = launchParams();
const config = await fetch('/v1/client-config').then((r) => r.json());
const open = new Map(); // payment_id -> {stripe, elements, email, error, busy, waiting}
const checked = new Set(); // payments whose PaymentIntent this page has asked Stripe about
let stripeLoaded = null;

/** Statuses in which the bank or Stripe is still deciding: never offer to pay again. */
const CONFIRMING = ['processing'];

function loadStripe() {
  if (!stripeLoaded) {
    stripeLoaded = new Promise((resolve, reject) => {
      const s = document.createElement('script');
      s.src = config.stripe_js_url;
      s.onload = () => resolve(window.Stripe);
      s.onerror = () => reject(new Error('Stripe.js could not be loaded'));
      document.head.appendChild(s);
    });
  }
  return stripeLoaded;
}

/** Sets text only when it changes: rewriting equal text would make screen readers repeat it. */
function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function el(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function confirmation(p) {
  const box = el('section', { class: 'card', 'aria-labelledby': `done-${p.payment_id}`, 'data-confirmation': p.payment_id });
  box.append(el('h2', { id: `done-${p.payment_id}`, class: 'ok' }, t('patient.done.title')));
  const dl = el('dl', { class: 'details' });
  const rows = [
    ['patient.done.amount', money(p.amount_received || p.amount, p.currency)],
    ['patient.done.description', p.description],
    ['patient.done.date', when(p.paid_at || p.updated_at)],
    ['patient.done.card', p.card_last4 ? `${brand(p.card_brand)} •••• ${p.card_last4}` : '—'],
    ['patient.done.receipt', p.receipt_email || '—'],
    ['patient.done.reference', p.reference || p.payment_id],
  ];
  if (p.amount_refunded > 0) rows.splice(1, 0, ['patient.done.refunded', money(p.amount_refunded, p.currency)]);
  for (const [k, v] of rows) dl.append(el('dt', {}, t(k)), el('dd', k === 'patient.done.refunded' ? { 'data-role': 'refunded' } : {}, v));
  box.append(dl);
  // Stripe sends its own receipt to the address given (the clinic may send one of its own too).
  if (p.receipt_email) box.append(el('p', { class: 'muted', 'data-role': 'stripe-receipt' }, t('patient.done.stripe_receipt', { email: p.receipt_email })));
  return box;
}

/**
 * After a load or reload, the hub may not have heard yet that a payment was paid (a late
 * webhook). Ask Stripe.js about the PaymentIntent before offering to pay it: if it is already
 * processing or paid, show that, and tell the hub, which then reads it from Stripe itself.
 */
async function checkIntent(p) {
  if (checked.has(p.payment_id) || !p.stripe || !['requested', 'authenticating'].includes(p.status)) return;
  checked.add(p.payment_id);
  try {
    const Stripe = await loadStripe();
    const stripe = Stripe(p.stripe.publishable_key, { stripeAccount: p.stripe.stripe_account });
    const { paymentIntent } = await stripe.retrievePaymentIntent(p.stripe.client_secret);
    if (paymentIntent && ['processing', 'succeeded'].includes(paymentIntent.status)) {
      open.set(p.payment_id, { ...(open.get(p.payment_id) || {}), waiting: true });
      client.progress(p.payment_id, 'submitted');
      render();
    }
  } catch {
    // Stripe.js unreachable: the pay form will say so if the patient tries.
  }
}

async function startPaying(p, card) {
  const state = { error: '', busy: false };
  open.set(p.payment_id, state);
  client.progress(p.payment_id, 'viewing');
  const Stripe = await loadStripe();
  state.stripe = Stripe(p.stripe.publishable_key, { stripeAccount: p.stripe.stripe_account, locale: document.documentElement.lang });
  state.elements = state.stripe.elements({ clientSecret: p.stripe.client_secret, locale: document.documentElement.lang });
  render();
  // The form replaced the button that had focus: continue at its first field.
  const email = document.getElementById(`email-${p.payment_id}`);
  if (email) email.focus();
}

/** The pay form, built once per payment and kept across re-renders so typed details survive. */
function payForm(p, state) {
  if (!state.form) {
    const form = el('form', { novalidate: '' });
    const emailId = `email-${p.payment_id}`;
    state.emailLabel = el('label', { for: emailId });
    form.append(state.emailLabel);
    const email = el('input', { id: emailId, type: 'email', autocomplete: 'email', required: '' });
    email.addEventListener('focus', () => client.progress(p.payment_id, 'entering_details'), { once: true });
    form.append(email);
    state.cardCaption = el('p', { class: 'muted' });
    form.append(state.cardCaption);
    const mount = el('div', { id: `card-${p.payment_id}` });
    form.append(mount);
    state.element = state.elements.create('payment');
    state.element.mount(mount);
    state.errEl = el('p', { class: 'error', role: 'alert', 'data-role': 'pay-error' });
    state.btn = el('button', { type: 'submit', 'data-role': 'pay' });
    form.append(state.errEl, state.btn);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      if (state.busy) return;
      if (!/^[^\s@]+@[^\s@]+\.[^\s@]+$/.test(email.value)) {
        state.error = t('patient.email.invalid');
        render();
        email.focus();
        return;
      }
      state.busy = true;
      state.error = '';
      render();
      client.progress(p.payment_id, 'submitting');
      // The receipt callpay may send is written in the language the patient pays in. Best
      // effort: a receipt in English is better than holding up the payment.
      await fetch(`/v1/calls/${encodeURIComponent(callId)}/payments/${encodeURIComponent(p.payment_id)}/language`, {
        method: 'PUT',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        body: JSON.stringify({ lang: document.documentElement.lang }),
      }).catch(() => {});
      const result = await state.stripe.confirmPayment({
        elements: state.elements,
        confirmParams: { receipt_email: email.value, return_url: returnUrl(p.stripe.client_secret) },
        redirect: 'if_required',
      });
      forgetReturn(p.stripe.client_secret);
      state.busy = false;
      if (result.error) {
        state.error = t('patient.declined', { reason: decline(result.error) });
      } else {
        state.waiting = true;
        // Stripe.js is done: the hub reads the PaymentIntent itself rather than wait on a webhook.
        client.progress(p.payment_id, 'submitted');
      }
      render();
    });
    state.form = form;
  }
  // Texts are set on every render so the language switch relabels an open form too.
  // Stripe's element follows the page's language too (the switch can change it while open).
  state.elements.update({ locale: document.documentElement.lang });
  setText(state.emailLabel, t('patient.email'));
  setText(state.cardCaption, t('patient.card'));
  setText(state.errEl, state.error || '');
  setText(state.btn, state.busy ? t('patient.paying') : t('patient.pay', { amount: money(p.amount, p.currency) }));
  state.btn.disabled = !!state.busy;
  return state.form;
}

/** One card per payment, kept across renders: updates change its parts in place, so a field
 * being typed in keeps its text, focus and caret whatever else changes. */
const cards = new Map(); // payment_id -> {card, amount, desc, from, key, body}

function cardFor(p) {
  let c = cards.get(p.payment_id);
  if (!c) {
    const card = el('article', { class: 'card', 'data-payment-id': p.payment_id });
    c = { card, amount: el('div', { class: 'amount' }), desc: el('p'), from: el('p', { class: 'muted' }), key: null, body: null };
    card.append(c.amount, c.desc, c.from);
    cards.set(p.payment_id, c);
  }
  return c;
}

/** What the card shows below its heading: a key that changes when it must be rebuilt, and how. */
function bodyOf(p, c) {
  const lang = document.documentElement.lang;
  const state = open.get(p.payment_id);
  if (p.status === 'succeeded' || p.status === 'partially_refunded' || p.status === 'refunded') {
    return [`done:${p.version}:${lang}`, () => confirmation(p)];
  }
  if (p.status === 'canceled') return [`canceled:${lang}`, () => el('p', { class: 'error' }, t('patient.canceled'))];
  if (CONFIRMING.includes(p.status) || (state && state.waiting && p.status !== 'failed')) {
    return [`waiting:${lang}`, () => el('p', { role: 'status' }, t('patient.waiting'))];
  }
  if (state && state.elements) return ['form', () => payForm(p, state)];
  if (p.stripe) {
    return [`paynow:${lang}`, () => {
      const btn = el('button', { type: 'button', 'data-role': 'pay-now' }, t('patient.paynow'));
      btn.addEventListener('click', () => startPaying(p, c.card));
      return btn;
    }];
  }
  return ['none', () => null];
}

function render() {
  const root = $('requests');
  const items = [...client.payments.values()].sort((a, b) => b.created_at - a.created_at);
  $('empty').hidden = items.length > 0;
  items.forEach((p, i) => {
    const c = cardFor(p);
    c.card.dataset.status = p.status;
    setText(c.amount, money(p.amount, p.currency));
    setText(c.desc, p.description);
    setText(c.from, t('patient.from', { name: p.requested_by.name, clinic: client.clinicName }));
    const [key, make] = bodyOf(p, c);
    // The pay form is built once; a render only refreshes its texts (payForm does that).
    if (key === 'form' && c.key === 'form') payForm(p, open.get(p.payment_id));
    if (key !== c.key) {
      const next = make();
      if (c.body) c.body.remove();
      if (next) c.card.append(next);
      c.body = next;
      c.key = key;
    }
    // Only move a card that is out of place: moving the one being typed in would drop focus.
    if (root.children[i] !== c.card) root.insertBefore(c.card, root.children[i] || null);
  });
  for (const [id, c] of cards) {
    if (!client.payments.has(id)) {
      c.card.remove();
      cards.delete(id);
    }
  }
}

const client = new CallpayClient({
  hubUrl: location.origin,
  callId,
  token,
  on(event, detail) {
    if (event === 'status') $('conn').textContent = t(`conn.${detail.state}`);
    if (event === 'payment' && detail.status === 'failed') {
      const s = open.get(detail.payment_id);
      if (s) { s.waiting = false; s.error = t('patient.declined', { reason: decline(detail.failure) }); }
    }
    if (event === 'welcome') for (const p of client.payments.values()) checkIntent(p);
    if (event === 'status' || event === 'welcome' || event === 'payment' || event === 'clinic') render();
  },
});

languageSwitch($('lang'), render);
applyI18n();
client.connect();
window.callpay = client;
