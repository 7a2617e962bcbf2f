// Clinician panel: request a payment, follow each request's live status, cancel, and get a
// "payment received" pop-up (announced to screen readers) the moment Stripe confirms.
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
      if (detail.payment) $('request').reset();
      retryable = detail.error?.code === 'stripe_unavailable' ? lastSent : null;
    }
    if (event === 'progress') progress.set(detail.payment_id, detail.stage);
    if (event === 'confirmed') popup(detail);
    if (event === 'clinic') unavailableReason = detail.reason || '';
    if (event === 'welcome') unavailableReason = detail.unavailable_reason || '';
    if (event === 'error') $('form-error').textContent = hubError(detail);
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
