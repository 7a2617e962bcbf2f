// Patient panel: a request appears at once; Pay Now opens e-mail + Stripe's Payment Element
// (Stripe.js loaded from the configured URL: Stripe's in production, the simulator offline).
// Card details go from Stripe.js to Stripe; this page only ever sees the outcome.
import { CallpayClient, launchParams } from '/web/sdk/callpay.js';
import { t, applyI18n, languageSwitch, money, decline } from '/web/i18n.js';
import { CardForm, el, loadStripe, paidDetails, resumeAfterRedirect, setText } from '/web/cardform.js';

const $ = (id) => document.getElementById(id);
// Back from a Stripe redirect, the join token is put back in the fragment before it is read;
// the panel then reconnects, and checkIntent tells the hub what Stripe says of the payment.
resumeAfterRedirect();
const { token, callId } = launchParams();
const config = await fetch('/v1/client-config').then((r) => r.json());
const open = new Map(); // payment_id -> {form (a CardForm once Stripe.js is loaded), waiting}
const checked = new Set(); // payments whose PaymentIntent this page has asked Stripe about

/** Statuses in which the bank or Stripe is still deciding: never offer to pay again. */
const CONFIRMING = ['processing'];

function confirmation(p) {
  const box = el('section', { class: 'card', 'aria-labelledby': `done-${p.payment_id}`, 'data-confirmation': p.payment_id });
  box.append(el('h2', { id: `done-${p.payment_id}`, class: 'ok' }, t('patient.done.title')));
  box.append(...paidDetails(p));
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
    const Stripe = await loadStripe(config.stripe_js_url);
    const stripe = Stripe(p.stripe.publishable_key, { stripeAccount: p.stripe.stripe_account });
    const { paymentIntent } = await stripe.retrievePaymentIntent(p.stripe.client_secret);
    if (paymentIntent && ['processing', 'succeeded'].includes(paymentIntent.status)) {
      // Changed in place: an open form's hooks hold this same state.
      const state = open.get(p.payment_id) || { form: null, waiting: false };
      state.waiting = true;
      open.set(p.payment_id, state);
      client.progress(p.payment_id, 'submitted');
      render();
    }
  } catch {
    // Stripe.js unreachable: the pay form will say so if the patient tries.
  }
}

async function startPaying(p) {
  const state = { form: null, waiting: false };
  open.set(p.payment_id, state);
  client.progress(p.payment_id, 'viewing');
  const Stripe = await loadStripe(config.stripe_js_url);
  state.form = new CardForm(Stripe, p, {
    changed: render,
    focused: () => client.progress(p.payment_id, 'entering_details'),
    submitting: async () => {
      client.progress(p.payment_id, 'submitting');
      // The receipt callpay may send is written in the language the patient pays in. Best
      // effort: a receipt in English is better than holding up the payment.
      await fetch(`/v1/calls/${encodeURIComponent(callId)}/payments/${encodeURIComponent(p.payment_id)}/language`, {
        method: 'PUT',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        body: JSON.stringify({ lang: document.documentElement.lang }),
      }).catch(() => {});
    },
    paid: () => {
      state.waiting = true;
      // Stripe.js is done: the hub reads the PaymentIntent itself rather than wait on a webhook.
      client.progress(p.payment_id, 'submitted');
      render();
    },
  });
  render();
  // The form replaced the button that had focus: continue at its first field.
  state.form.focus();
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
function bodyOf(p) {
  const lang = document.documentElement.lang;
  const state = open.get(p.payment_id);
  if (p.status === 'succeeded' || p.status === 'partially_refunded' || p.status === 'refunded') {
    return [`done:${p.version}:${lang}`, () => confirmation(p)];
  }
  if (p.status === 'canceled') return [`canceled:${lang}`, () => el('p', { class: 'error' }, t('patient.canceled'))];
  if (CONFIRMING.includes(p.status) || (state && state.waiting && p.status !== 'failed')) {
    return [`waiting:${lang}`, () => el('p', { role: 'status' }, t('patient.waiting'))];
  }
  if (state && state.form) return ['form', () => state.form.node];
  if (p.stripe) {
    return [`paynow:${lang}`, () => {
      const btn = el('button', { type: 'button', 'data-role': 'pay-now' }, t('patient.paynow'));
      btn.addEventListener('click', () => startPaying(p));
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
    const [key, make] = bodyOf(p);
    // The pay form is built once; a render only refreshes its texts.
    if (key === 'form') open.get(p.payment_id).form.refresh(p);
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
      if (s) {
        s.waiting = false;
        if (s.form) s.form.showError(t('patient.declined', { reason: decline(detail.failure) }));
      }
    }
    if (event === 'welcome') for (const p of client.payments.values()) checkIntent(p);
    if (event === 'status' || event === 'welcome' || event === 'payment' || event === 'clinic') render();
  },
});

languageSwitch($('lang'), render);
applyI18n();
client.connect();
window.callpay = client;
