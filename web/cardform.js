// What the two patient pages (the in-call panel and the pay-by-link page) share about paying
// by card through Stripe.js.
//
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
