// Clinician panel: request a payment, follow each request's live status, cancel, get a
// "payment received" pop-up (announced to screen readers) the moment Stripe confirms, and refund
// a paid payment (while the clinic's policy lets the clinician).
import { CallpayClient, launchParams } from '/web/sdk/callpay.js';
import { t, applyI18n, languageSwitch, money, when, brand, decline, asciiDigits, hubError } from '/web/i18n.js';

const $ = (id) => document.getElementById(id);
const { token, callId } = launchParams();
const config = await fetch('/v1/client-config').then((r) => r.json());
const progress = new Map();
let unavailableReason = '';
// The form's request until the hub has it (or refuses it): the form keeps its text meanwhile.
let sending = null;
/**
 * The last request sent, and, after the hub refused it because Stripe could not be reached,
 * the same request to send again under the same client_ref: the hub then finishes the payment
 * it already recorded instead of leaving it behind and making a second one.
 */
let lastSent = null;
let retryable = null;
let live = false;
// The request whose Cancel was clicked and waits for a yes or no.
let confirmingCancel = null;
/**
 * Open refund forms by payment id: each has its own key, so a double click or a retry after
 * Stripe was unreachable is the same refund to the hub, never a second one. The refund goes
 * through the hub's API with this page's join token; the call hears of it as a payment.updated.
 */
const refunding = new Map();
/** Keys of refunds the hub kept unfinished, by payment: reopening the form keeps the key. */
const keptKeys = new Map();
const REASONS = ['requested_by_customer', 'duplicate', 'fraudulent'];
/** Payment links made in this page, by payment id: {url, expiresAt, copied} or {error}. */
const links = new Map();

/**
 * Asks the hub for a signed, expiring link to an unpaid request (the patient pays the same
 * PaymentIntent outside the call), shows it, and copies it when the browser lets the page.
 */
async function makeLink(p) {
  try {
    const r = await fetch(`/v1/calls/${encodeURIComponent(callId)}/payments/${encodeURIComponent(p.payment_id)}/link`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}` },
    });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(body.code || String(r.status));
    let copied = false;
    try {
      await navigator.clipboard.writeText(body.url);
      copied = true;
    } catch (_) { /* no clipboard here (an iframe without the permission): the field is selectable */ }
    links.set(p.payment_id, { url: body.url, expiresAt: body.expires_at * 1000, copied });
  } catch (_) {
    links.set(p.payment_id, { error: true });
  }
  render();
}

function linkBox(p, link) {
  const box = document.createElement('div');
  box.dataset.role = 'link';
  if (link.error) {
    const err = document.createElement('p');
    err.className = 'error';
    err.setAttribute('role', 'alert');
    err.textContent = t('clinician.link.error');
    box.append(err);
    return box;
  }
  const label = document.createElement('label');
  label.htmlFor = `link-${p.payment_id}`;
  label.textContent = t('clinician.link.label');
  const field = document.createElement('input');
  field.id = `link-${p.payment_id}`;
  field.readOnly = true;
  field.value = link.url;
  field.dataset.role = 'link-url';
  field.addEventListener('focus', () => field.select());
  const note = document.createElement('p');
  note.className = 'muted';
  note.setAttribute('role', 'status');
  note.textContent = t(link.copied ? 'clinician.link.copied' : 'clinician.link.ready', { time: when(link.expiresAt) });
  box.append(label, field, note);
  return box;
}

async function sendRefund(p, state) {
  const cents = parseRefund(state.amount);
  if (cents === null) {
    state.error = t('refund.error.invalid_amount');
    render();
    return;
  }
  state.sending = true;
  state.error = '';
  render();
  try {
    const r = await fetch(`/v1/calls/${encodeURIComponent(callId)}/payments/${encodeURIComponent(p.payment_id)}/refunds`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ amount: cents, reason: state.reason, request_key: state.key }),
    });
    const body = await r.json().catch(() => ({}));
    if (r.ok) {
      refunding.delete(p.payment_id);
      keptKeys.delete(p.payment_id);
      $('announce').textContent = t('refund.done', { amount: money(body.refund.amount, body.refund.currency) });
    } else {
      const key = `refund.error.${body.code}`;
      state.error = t(key) === key ? t('refund.error.other') : t(key);
      // Only an unfinished refund is sent again under its key (by any form opened for this
      // payment); after a final answer the next request is a new one.
      if (['stripe_unavailable', 'unavailable'].includes(body.code)) keptKeys.set(p.payment_id, state.key);
      else {
        keptKeys.delete(p.payment_id);
        state.key = crypto.randomUUID();
      }
    }
  } catch (_) {
    state.error = t('refund.error.other');
  }
  state.sending = false;
  render();
}

/** "20", "20.50", "$20" -> cents; null if it is not a positive amount. */
function parseRefund(text) {
  const m = /^\s*(?:A?U?\$\s*)?(\d{1,7})(?:[.,](\d{1,2}))?\s*$/.exec(asciiDigits(text));
  const cents = m ? Number(m[1]) * 100 + Number((m[2] || '').padEnd(2, '0')) : 0;
  return cents > 0 ? cents : null;
}

function refundForm(p, state) {
  const form = document.createElement('form');
  form.dataset.role = 'refund-form';
  form.setAttribute('aria-label', t('refund.title'));
  const left = (p.amount_received ?? p.amount) - (p.amount_refunded || 0);
  const amountLabel = document.createElement('label');
  amountLabel.htmlFor = `refund-amount-${p.payment_id}`;
  amountLabel.textContent = t('refund.amount');
  const amount = document.createElement('input');
  amount.id = `refund-amount-${p.payment_id}`;
  amount.inputMode = 'decimal';
  amount.dataset.role = 'refund-amount';
  amount.value = state.amount || (left / 100).toFixed(2);
  amount.addEventListener('input', () => { state.amount = amount.value; });
  const help = document.createElement('p');
  help.className = 'muted';
  help.textContent = t('refund.amount.help', { amount: money(left, p.currency) });
  const reasonLabel = document.createElement('label');
  reasonLabel.htmlFor = `refund-reason-${p.payment_id}`;
  reasonLabel.textContent = t('refund.reason');
  const reason = document.createElement('select');
  reason.id = `refund-reason-${p.payment_id}`;
  for (const r of REASONS) {
    const opt = document.createElement('option');
    opt.value = r;
    opt.textContent = t(`refund.reason.${r}`);
    reason.append(opt);
  }
  reason.value = state.reason;
  reason.addEventListener('change', () => { state.reason = reason.value; });
  const error = document.createElement('p');
  error.className = 'error';
  error.setAttribute('role', 'alert');
  error.textContent = state.error;
  const submit = document.createElement('button');
  submit.type = 'submit';
  submit.dataset.role = 'refund-submit';
  submit.disabled = state.sending;
  submit.textContent = state.sending ? t('refund.sending') : t('refund.submit');
  const close = document.createElement('button');
  close.type = 'button';
  close.className = 'secondary';
  close.textContent = t('refund.close');
  close.addEventListener('click', () => { refunding.delete(p.payment_id); render(); });
  form.append(amountLabel, amount, help, reasonLabel, reason, error, submit, close);
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    state.amount = amount.value;
    if (!state.sending) sendRefund(p, state);
  });
  return form;
}

/** "50", "$50", "A$50.5", "50.00" -> cents; anything else -> null. Same bounds as the hub. */
function parseAmount(text) {
  const m = /^\s*(?:A?U?\$\s*)?(\d{1,7})(?:\.(\d{1,2}))?\s*$/.exec(asciiDigits(text));
  if (!m) return null;
  const cents = Number(m[1]) * 100 + Number((m[2] || '').padEnd(2, '0'));
  return cents >= 50 && cents <= config.max_amount ? cents : null;
}

function statusText(p) {
  if (p.status === 'failed') return t('status.failed', { reason: decline(p.failure) });
  if (p.status === 'requested' && progress.has(p.payment_id)) return t('status.paying');
  return t(`status.${p.status}`);
}

function render() {
  const list = $('payments');
  list.innerHTML = '';
  const items = [...client.payments.values()].sort((a, b) => b.created_at - a.created_at);
  $('empty').hidden = items.length > 0;
  for (const p of items) {
    const li = document.createElement('li');
    li.className = 'card';
    li.dataset.paymentId = p.payment_id;
    li.dataset.status = p.status;
    const head = document.createElement('div');
    head.className = 'row';
    const amount = document.createElement('span');
    amount.className = 'amount';
    amount.textContent = money(p.amount, p.currency);
    const status = document.createElement('span');
    status.className = `status status-${p.status}`;
    status.dataset.role = 'status';
    status.textContent = statusText(p);
    head.append(amount, status);
    const desc = document.createElement('p');
    desc.textContent = p.description;
    li.append(head, desc);
    if (p.status === 'succeeded' && p.card_last4) {
      const paid = document.createElement('p');
      paid.className = 'muted';
      paid.textContent = `${brand(p.card_brand)} •••• ${p.card_last4} · ${when(p.paid_at)}`;
      li.append(paid);
    }
    if (p.amount_refunded > 0) {
      const back = document.createElement('p');
      back.dataset.role = 'refunded';
      back.textContent = t('payments.refunded', { amount: money(p.amount_refunded, p.currency) });
      li.append(back);
    }
    if (['succeeded', 'partially_refunded'].includes(p.status)) {
      if (refunding.has(p.payment_id)) {
        li.append(refundForm(p, refunding.get(p.payment_id)));
      } else {
        const refund = document.createElement('button');
        refund.className = 'secondary';
        refund.dataset.role = 'refund';
        refund.textContent = t('refund.button');
        refund.addEventListener('click', () => {
          refunding.set(p.payment_id, { key: keptKeys.get(p.payment_id) || crypto.randomUUID(), amount: '', reason: REASONS[0], error: '', sending: false });
          render();
        });
        li.append(refund);
      }
    }
    if (['requested', 'authenticating', 'failed'].includes(p.status)) {
      const copy = document.createElement('button');
      copy.className = 'secondary';
      copy.dataset.role = 'copy-link';
      copy.textContent = t('clinician.link');
      copy.addEventListener('click', () => makeLink(p));
      li.append(copy);
      if (links.has(p.payment_id)) li.append(linkBox(p, links.get(p.payment_id)));
    }
    if (['requested', 'authenticating', 'failed', 'creating'].includes(p.status)) {
      if (confirmingCancel === p.payment_id) {
        // A second, explicit step: a stray click must not withdraw a request the patient is paying.
        const ask = document.createElement('p');
        ask.textContent = t('clinician.cancel.confirm');
        const yes = document.createElement('button');
        yes.className = 'secondary';
        yes.textContent = t('clinician.cancel.yes');
        yes.addEventListener('click', () => { confirmingCancel = null; client.cancel(p.payment_id); render(); });
        const no = document.createElement('button');
        no.className = 'secondary';
        no.textContent = t('clinician.cancel.no');
        no.addEventListener('click', () => { confirmingCancel = null; render(); });
        li.append(ask, yes, no);
      } else {
        const cancel = document.createElement('button');
        cancel.className = 'secondary';
        cancel.textContent = t('clinician.cancel');
        cancel.addEventListener('click', () => { confirmingCancel = p.payment_id; render(); });
        li.append(cancel);
      }
    }
    list.append(li);
  }
  $('unavailable').hidden = client.paymentsAvailable;
  $('unavailable').textContent = t('clinician.unavailable', { reason: unavailableReason ? t(`reason.${unavailableReason}`) : '' });
  $('submit').disabled = !client.paymentsAvailable || sending !== null;
  $('submit').textContent = sending ? t('clinician.sending') : t('clinician.submit');
  $('amount').readOnly = $('description').readOnly = sending !== null;
  $('queued').hidden = !(sending && !live);
  $('queued').textContent = t('clinician.queued');
}

function popup(p) {
  const body = t('clinician.popup.body', { amount: money(p.amount_received || p.amount, p.currency), description: p.description, time: when(p.paid_at || Date.now()) });
  $('popup-body').textContent = body;
  // A notice, not a dialog: it must not take focus from whatever the clinician is typing. The
  // live region announces it; Escape or Close dismisses it and focus stays (or goes back) where
  // the clinician was.
  $('popup').hidden = false;
  $('announce').textContent = `${t('clinician.popup.title')}: ${body}`;
}

/** The element focused outside the notice most recently, to return to after Close. */
let lastFocus = null;
document.addEventListener('focusin', (ev) => {
  if (!$('popup').contains(ev.target)) lastFocus = ev.target;
});

function closePopup() {
  $('popup').hidden = true;
  if (lastFocus && document.contains(lastFocus)) lastFocus.focus();
}

document.addEventListener('keydown', (ev) => {
  if (ev.key === 'Escape' && !$('popup').hidden) closePopup();
});

const client = new CallpayClient({
  hubUrl: location.origin,
  callId,
  token,
  on(event, detail) {
    if (event === 'status') {
      $('conn').textContent = t(`conn.${detail.state}`);
      live = detail.state === 'live';
    }
    if (event === 'request' && detail.client_ref === sending) {
      sending = null;
      if (detail.payment) {
        $('request').reset();
        $('form-error').textContent = '';
      }
      retryable = detail.error?.code === 'stripe_unavailable' ? lastSent : null;
    }
    if (event === 'progress') progress.set(detail.payment_id, detail.stage);
    if (event === 'confirmed') popup(detail);
    if (event === 'clinic') unavailableReason = detail.reason || '';
    if (event === 'welcome') unavailableReason = detail.unavailable_reason || '';
    if (event === 'error') $('form-error').textContent = hubError(detail);
    if (event === 'busy' && detail.client_ref === sending) {
      const seconds = Math.max(1, Math.round(detail.wait / 1000)).toLocaleString(document.documentElement.lang);
      $('form-error').textContent = t('clinician.busy', { seconds });
    }
    render();
  },
});

$('request').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const cents = parseAmount($('amount').value);
  const description = $('description').value.trim();
  if (cents === null) {
    $('form-error').textContent = t('validate.amount', { max: money(config.max_amount, 'aud') });
    $('amount').setAttribute('aria-invalid', 'true');
    $('amount').focus();
    return;
  }
  if (!description || description.length > 200) {
    $('form-error').textContent = t('validate.description');
    $('description').setAttribute('aria-invalid', 'true');
    $('description').focus();
    return;
  }
  $('form-error').textContent = '';
  $('amount').removeAttribute('aria-invalid');
  $('description').removeAttribute('aria-invalid');
  if (sending) return;
  const again = retryable && retryable.cents === cents && retryable.description === description;
  const clientRef = again ? retryable.ref : undefined;
  retryable = null;
  sending = client.request({ amount: cents, currency: config.default_currency, description, clientRef });
  lastSent = { ref: sending, cents, description };
  render();
});
$('popup-close').addEventListener('click', closePopup);
// A field fixed by typing is no longer invalid.
for (const id of ['amount', 'description']) $(id).addEventListener('input', () => $(id).removeAttribute('aria-invalid'));

languageSwitch($('lang'), render);
applyI18n();
client.connect();
window.callpay = client;
