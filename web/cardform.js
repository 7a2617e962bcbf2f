// What the two patient pages (the in-call panel and the pay-by-link page) share about paying
// by card through Stripe.js: loading Stripe.js, the card form (e-mail for the receipt,
// Stripe's Payment Element, the pay button, the confirm), what a paid payment shows, and
// Stripe's return URL. Card details go from Stripe.js to Stripe; the pages only hear the
// outcome. What differs between the pages (what they tell the hub, what they do once Stripe.js
// has answered) comes in as hooks.
import { t, money, when, brand, decline } from '/web/i18n.js';

/** A new element with attributes and, if given, text. */
export function el(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

/** Sets text only when it changes: rewriting equal text would make screen readers repeat it. */
export function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

let stripeLoading = null;

/** Stripe.js from `url`, loaded once per page; a load that failed is tried again next time. */
export function loadStripe(url) {
  if (!stripeLoading) {
    stripeLoading = new Promise((resolve, reject) => {
      const s = el('script', { src: url });
      s.onload = () => resolve(window.Stripe);
      s.onerror = () => {
        stripeLoading = null;
        s.remove();
        reject(new Error('Stripe.js could not be loaded'));
      };
      document.head.appendChild(s);
    });
  }
  return stripeLoading;
}

/** A paid payment's details (amount, refunds, what for, when, card, receipt, reference) and
 * the line saying Stripe e-mails its receipt, for a page's confirmation box. */
export function paidDetails(p) {
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
  // Stripe sends its own receipt to the address given (the clinic may send one of its own too).
  if (!p.receipt_email) return [dl];
  return [dl, el('p', { class: 'muted', 'data-role': 'stripe-receipt' }, t('patient.done.stripe_receipt', { email: p.receipt_email }))];
}

/** What an e-mail address must look like before the form sends anything. */
const EMAIL = /^[^\s@]+@[^\s@]+\.[^\s@]+$/;

/**
 * The card form for one payment, bound to its PaymentIntent for good (a page that moves on to
 * another payment closes it and makes another). Built once and kept across the page's
 * renders, so typed details, focus and Stripe's element survive them; `refresh()` relabels it
 * (the language switch). `Stripe` is the loaded Stripe.js; `p` the payment with its `stripe`
 * (publishable key, connected account, client secret). Hooks, all optional:
 * - `changed()`: the form's state changed (busy, an error); the page renders.
 * - `focused()`: the patient reached the e-mail field (once).
 * - `submitting()`: awaited before the confirm (what the page tells the hub first).
 * - `paid(paymentIntent)`: Stripe.js says paid or processing; the page waits for the hub.
 */
export class CardForm {
  constructor(Stripe, p, hooks = {}) {
    const lang = document.documentElement.lang;
    this.payment = p;
    this.hooks = hooks;
    this.busy = false;
    this.error = '';
    this.closed = false;
    this.stripe = Stripe(p.stripe.publishable_key, { stripeAccount: p.stripe.stripe_account, locale: lang });
    this.elements = this.stripe.elements({ clientSecret: p.stripe.client_secret, locale: lang });
    // Ids per payment: the in-call page can have two forms open, and labels must not cross.
    const emailId = `email-${p.payment_id}`;
    this.node = el('form', { novalidate: '' });
    this.emailLabel = el('label', { for: emailId });
    this.email = el('input', { id: emailId, type: 'email', autocomplete: 'email', required: '' });
    this.email.addEventListener('focus', () => this.hooks.focused?.(), { once: true });
    this.cardCaption = el('p', { class: 'muted' });
    const mount = el('div', { id: `card-${p.payment_id}` });
    this.errEl = el('p', { class: 'error', role: 'alert', 'data-role': 'pay-error' });
    this.btn = el('button', { type: 'submit', 'data-role': 'pay' });
    this.node.append(this.emailLabel, this.email, this.cardCaption, mount, this.errEl, this.btn);
    this.elements.create('payment').mount(mount);
    this.node.addEventListener('submit', (ev) => {
      ev.preventDefault();
      this.submit();
    });
    this.refresh();
  }

  /** Moves focus to the first field (the form replaced the button that had it). */
  focus() {
    this.email.focus();
  }

  /** The page has moved on from this payment: a confirm not yet sent is not sent, and what
   * Stripe.js answers to one already sent no longer changes the page. */
  close() {
    this.closed = true;
  }

  /** Shows why the payment did not go through (a decline the hub heard of, say). */
  showError(text) {
    this.error = text;
    this.changed();
  }

  /** Sets every text in the page's current language, and the amount from `p` if given. */
  refresh(p = this.payment) {
    this.payment = { ...p, stripe: this.payment.stripe };
    // Stripe's element follows the page's language too (the switch can change it while open).
    this.elements.update({ locale: document.documentElement.lang });
    setText(this.emailLabel, t('patient.email'));
    setText(this.cardCaption, t('patient.card'));
    setText(this.errEl, this.error || '');
    setText(this.btn, this.busy ? t('patient.paying') : t('patient.pay', { amount: money(this.payment.amount, this.payment.currency) }));
    this.btn.disabled = this.busy;
  }

  changed() {
    this.refresh();
    this.hooks.changed?.();
  }

  async submit() {
    if (this.busy || this.closed) return;
    if (!EMAIL.test(this.email.value)) {
      this.error = t('patient.email.invalid');
      this.changed();
      this.email.focus();
      return;
    }
    this.busy = true;
    this.error = '';
    this.changed();
    await this.hooks.submitting?.();
    if (this.closed) return;
    const secret = this.payment.stripe.client_secret;
    const result = await this.stripe.confirmPayment({
      elements: this.elements,
      confirmParams: { receipt_email: this.email.value, return_url: returnUrl(secret) },
      redirect: 'if_required',
    });
    forgetReturn(secret);
    if (this.closed) return;
    this.busy = false;
    if (result.error) {
      this.showError(t('patient.declined', { reason: decline(result.error) }));
    } else {
      this.refresh();
      this.hooks.paid?.(result.paymentIntent);
    }
  }
}

// Stripe's return URL. Stripe.js needs one for payment steps it shows as a redirect (a bank's
// 3-D Secure page in place of ours): Stripe keeps it on the PaymentIntent, and the bank's
// pages see it. Both pages carry a bearer token in their fragment (the join token, the link
// token), so the return URL is the page without its fragment; the fragment waits in this
// tab's sessionStorage under the PaymentIntent's id and is put back on the way in.

/** sessionStorage key prefix for a fragment kept while Stripe has the patient elsewhere. */
const RETURN_KEY = 'callpay.return.';
/** The query parameters Stripe adds to the return URL when it sends the patient back. */
const RETURN_PARAMS = ['payment_intent', 'payment_intent_client_secret', 'redirect_status'];

function intentOf(clientSecret) {
  return clientSecret.split('_secret_')[0];
}

/** The return URL to give Stripe for paying `clientSecret`'s PaymentIntent from this page. */
export function returnUrl(clientSecret) {
  try {
    sessionStorage.setItem(RETURN_KEY + intentOf(clientSecret), location.hash);
  } catch {
    // Storage turned off: a redirect would come back to the page without its token (the page
    // says so); the payment itself is unaffected.
  }
  return `${location.origin}${location.pathname}${location.search}`;
}

/** Stripe.js answered in the page, so no redirect happened: drop the fragment kept for one. */
export function forgetReturn(clientSecret) {
  try {
    sessionStorage.removeItem(RETURN_KEY + intentOf(clientSecret));
  } catch {
    // Storage turned off: nothing was kept.
  }
}

/**
 * Run before the page reads its fragment. Back from a Stripe redirect
 * (`?payment_intent=…&redirect_status=…`), puts the fragment kept for it back and takes
 * Stripe's parameters (the client secret among them) off the address bar, without a new
 * history entry. Answers whether the page is back from one with its fragment.
 */
export function resumeAfterRedirect() {
  const query = new URLSearchParams(location.search);
  const intent = query.get('payment_intent');
  if (!intent) return false;
  let hash = null;
  try {
    hash = sessionStorage.getItem(RETURN_KEY + intent);
    sessionStorage.removeItem(RETURN_KEY + intent);
  } catch {
    // Storage turned off: nothing to put back.
  }
  for (const k of RETURN_PARAMS) query.delete(k);
  const rest = query.toString();
  history.replaceState(history.state, '', `${location.pathname}${rest ? `?${rest}` : ''}${hash || location.hash}`);
  return !!hash;
}
