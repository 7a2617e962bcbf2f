// Pay by link in a real browser: the clinician copies a link from the panel, the patient opens
// it outside the call (a browser with no call token) and pays through the simulator's Stripe.js,
// the clinician's panel gets the "payment received" notice, and callpay's own receipt is in the
// demo mailbox. In English and in Bengali; then each page a link can lead to instead (expired,
// altered, cancelled, already paid, a clinic that no longer takes it) in both languages.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { browser, page, shot, requestPayment, pay, inCall, returnUrlsSent } from './harness.mjs';

let b;
before(async () => { b = await browser(); });
after(async () => { await b.close(); });

/** The clinician clicks the request's link button and reads the link it shows. */
async function copyLink(doc, description, buttonName) {
  const item = doc.locator('li', { hasText: description });
  await item.getByRole('button', { name: buttonName }).click();
  const field = item.locator('input[data-role=link-url]');
  await field.waitFor();
  return field.inputValue();
}

/** A link to `paymentId` expiring at `exp` (Unix s), signed as the demo hub signs (its key is
 * derived from the demo's platform secret, which the demo prints for scripts). */
function signLink(info, paymentId, exp) {
  const key = createHmac('sha256', info.platform_secret).update('callpay pay-link key v1').digest();
  const sig = createHmac('sha256', key).update(`callpay.paylink.v1|${paymentId}|${exp}`).digest('hex');
  return `${info.hub_url}/pay#link=${paymentId}.${exp}.${sig}`;
}

/** Latin-script words on a Bengali page, besides names and brands (as flow.test.mjs checks). */
async function latinWords(p, data) {
  const text = await p.evaluate(() => `${document.title}\n${document.body.innerText}`);
  const allowed = new Set(['callpay', 'AUD', 'CVC', 'Visa', 'English', 'Stripe', 'UTC']);
  let rest = text;
  for (const d of data) rest = rest.split(d).join(' ');
  rest = rest.replace(/\S+@[\w.-]+/g, ' ').replace(/\bpi_\w+/g, ' ');
  return [...new Set(rest.match(/[A-Za-z]{2,}/g) || [])].filter((w) => !allowed.has(w));
}

test('a patient pays by link outside the call; the clinician hears it; the receipt is in the mailbox', async () => {
  await inCall(b, async ({ info, doc }) => {
    await doc.getByText('Live').waitFor();
    await requestPayment(doc, '40.00', 'Dermatology follow-up');
    const url = await copyLink(doc, 'Dermatology follow-up', 'Copy payment link');
    assert.match(url, new RegExp(`^${info.hub_url}/pay#link=pay_`));
    await doc.getByText('valid until').waitFor();
    await shot(doc, 'link-1-clinician-copied');
    // A browser with no call: only the link.
    const patient = await page(b, { width: 390, height: 844 });
    await patient.goto(url);
    const item = patient.locator('article', { hasText: 'Dermatology follow-up' });
    await item.getByText('$40.00').waitFor();
    await item.getByText('Requested by Dr Ada Lee, Harbour Clinic').waitFor();
    await item.getByText('This link is valid until').waitFor();
    await shot(patient, 'link-2-patient-opens');
    await pay(patient, 'Dermatology follow-up', '4242 4242 4242 4242');
    const done = patient.locator('[data-confirmation]');
    await done.getByText('Payment complete').waitFor({ timeout: 20000 });
    const text = await done.textContent();
    for (const part of ['$40.00', 'Dermatology follow-up', 'Visa', '4242', 's•••@example.com', 'pi_', "Stripe, the clinic's payment processor, e-mails your receipt"]) {
      assert.ok(text.includes(part), `confirmation shows ${part}: ${text}`);
    }
    await shot(patient, 'link-3-patient-paid');
    // The clinician's panel, still in the call, gets the usual notice.
    const popup = doc.getByRole('region', { name: 'Payment received' });
    await popup.getByText('Payment received').waitFor();
    assert.match(await popup.textContent(), /\$40\.00.*Dermatology follow-up/);
    await doc.locator('li[data-status=succeeded]').getByText('Paid').waitFor();
    assert.equal(await doc.locator('li[data-status=succeeded] [data-role=copy-link]').count(), 0, 'no link for a paid request');
    // Opened again: already paid, nothing to pay.
    await patient.reload();
    await patient.getByRole('heading', { name: 'This payment is already paid' }).waitFor();
    assert.equal(await patient.locator('[data-role=pay-now]').count(), 0);
    await shot(patient, 'link-4-already-paid');
    // callpay's own receipt, in the demo mailbox.
    const mailbox = await page(b);
    await mailbox.goto(`${info.hub_url}/demo/mailbox`);
    const mail = mailbox.locator('[data-role=mail]').first();
    await mail.locator('[data-role=subject]').getByText('Your payment receipt from Harbour Clinic: 40.00 AUD').waitFor();
    assert.match(await mail.textContent(), /sam@example\.com[\s\S]*Amount: 40\.00 AUD[\s\S]*For: Dermatology follow-up/);
    await shot(mailbox, 'link-5-demo-mailbox');
  });
});

test('the same in Bengali: the link page, the payment, and a Bengali receipt', async () => {
  await inCall(b, async ({ info, doc }) => {
    await doc.getByRole('heading', { name: 'পেমেন্টের অনুরোধ' }).waitFor();
    await doc.getByLabel('পরিমাণ (AUD)').fill('৩০.০০');
    await doc.getByLabel('বিবরণ').fill('Consultation');
    await doc.getByRole('button', { name: 'পেমেন্টের অনুরোধ পাঠান' }).click();
    const url = await copyLink(doc, 'Consultation', 'পেমেন্ট লিংক কপি করুন');
    const data = ['Consultation', 'Harbour Clinic', 'Dr Ada Lee', 'Sam Taylor'];
    assert.deepEqual(await latinWords(doc, data), [], 'clinician with a link shown');
    const patient = await page(b, { lang: 'bn-BD', width: 390, height: 844 });
    await patient.goto(url);
    await patient.locator('article', { hasText: 'Consultation' }).getByText('এই লিংকটি').waitFor();
    assert.equal(await patient.title(), 'পেমেন্ট · callpay');
    assert.deepEqual(await latinWords(patient, data), [], 'link page before paying');
    await pay(patient, 'Consultation', '4242424242424242', { lang: 'bn' });
    await patient.getByText('পেমেন্ট সম্পন্ন হয়েছে').waitFor({ timeout: 20000 });
    await patient.getByText('ক্লিনিকের পেমেন্ট প্রসেসর Stripe আপনার রসিদ').waitFor();
    assert.deepEqual(await latinWords(patient, data), [], 'link page after paying');
    await shot(patient, 'link-bn-1-paid');
    await doc.locator('#popup').getByText('পেমেন্ট পাওয়া গেছে').waitFor();
    const mailbox = await page(b, { lang: 'bn-BD' });
    await mailbox.goto(`${info.hub_url}/demo/mailbox`);
    await mailbox.getByRole('heading', { name: 'ডেমো মেইলবক্স' }).waitFor();
    const mail = mailbox.locator('[data-role=mail]').first();
    await mail.getByText('Harbour Clinic থেকে আপনার পেমেন্টের রসিদ: ৩০.০০ AUD').waitFor();
    assert.match(await mail.locator('[data-role=body]').textContent(), /পরিমাণ: ৩০\.০০ AUD/);
    await shot(mailbox, 'link-bn-2-mailbox');
  }, { lang: 'bn-BD' });
});

/** What each page says, by language: its heading. */
const HEADINGS = {
  en: {
    link_expired: 'This payment link has expired',
    link_invalid: 'This payment link is not valid',
    link_canceled: 'This payment request was cancelled',
    paid: 'This payment is already paid',
    clinic_unavailable: 'This clinic no longer takes this payment here',
  },
  bn: {
    link_expired: 'এই পেমেন্ট লিংকের মেয়াদ শেষ হয়ে গেছে',
    link_invalid: 'এই পেমেন্ট লিংকটি সঠিক নয়',
    link_canceled: 'এই পেমেন্টের অনুরোধ বাতিল করা হয়েছে',
    paid: 'এই পেমেন্ট আগেই পরিশোধ করা হয়েছে',
    clinic_unavailable: 'এই ক্লিনিক এখন আর এখানে এই পেমেন্ট নেয় না',
  },
};

test('each page a link can lead to instead of paying, in English and Bengali', async () => {
  await inCall(b, async ({ info, doc, pat }) => {
    await doc.getByText('Live').waitFor();
    // Three requests: one to cancel, one to pay in the call, one whose clinic goes away.
    await requestPayment(doc, '10.00', 'To cancel');
    const cancelUrl = await copyLink(doc, 'To cancel', 'Copy payment link');
    await requestPayment(doc, '11.00', 'Paid in the call');
    const paidUrl = await copyLink(doc, 'Paid in the call', 'Copy payment link');
    await requestPayment(doc, '12.00', 'Clinic leaves');
    const leftUrl = await copyLink(doc, 'Clinic leaves', 'Copy payment link');

    const cancelItem = doc.locator('li', { hasText: 'To cancel' });
    await cancelItem.getByRole('button', { name: 'Cancel request' }).click();
    await doc.getByRole('button', { name: 'Yes, cancel it' }).click();
    await cancelItem.getByText('Cancelled').waitFor();

    await pat.locator('article', { hasText: 'Paid in the call' }).getByRole('button', { name: 'Pay Now' }).waitFor();
    await pay(pat, 'Paid in the call', '4242 4242 4242 4242');
    await pat.locator('article', { hasText: 'Paid in the call' }).getByText('Payment complete').waitFor({ timeout: 20000 });

    const paymentId = (u) => u.split('#link=')[1].split('.')[0];
    const expiredUrl = signLink(info, paymentId(leftUrl), Math.floor(Date.now() / 1000) - 60);
    const token = leftUrl.split('#link=')[1];
    const alteredUrl = `${info.hub_url}/pay#link=${token.slice(0, -4)}${token.slice(-4) === 'aaaa' ? 'bbbb' : 'aaaa'}`;
    const pages = [
      ['link_expired', expiredUrl],
      ['link_invalid', alteredUrl],
      ['link_invalid', `${info.hub_url}/pay`],
      ['link_canceled', cancelUrl],
      ['paid', paidUrl],
    ];
    for (const lang of ['en', 'bn']) {
      for (const [state, url] of pages) {
        const p = await page(b, { lang: lang === 'bn' ? 'bn-BD' : 'en-AU' });
        await p.goto(url);
        await p.getByRole('heading', { name: HEADINGS[lang][state] }).waitFor({ timeout: 5000 }).catch(async (e) => {
          throw new Error(`${lang} ${state} ${url}: ${await p.evaluate(() => document.body.innerText)} ${e}`);
        });
        assert.equal(await p.locator('[data-role=pay-now]').count(), 0, `${lang} ${state}: nothing to pay`);
        if (lang === 'bn') assert.deepEqual(await latinWords(p, ['Paid in the call', 'Harbour Clinic', 'Dr Ada Lee']), [], `bn ${state}`);
        await shot(p, `link-page-${lang}-${state}-${pages.findIndex(([, u]) => u === url)}`);
        await p.context().close();
      }
    }
    // The clinic's Stripe account is removed: its links lead nowhere, in both languages.
    const removed = await fetch(`${info.hub_url}/v1/clinics/${info.clinic_id}/stripe`, {
      method: 'DELETE', headers: { authorization: `Bearer ${info.clinic_admin_token}` },
    });
    assert.equal(removed.status, 200);
    for (const lang of ['en', 'bn']) {
      const p = await page(b, { lang: lang === 'bn' ? 'bn-BD' : 'en-AU' });
      await p.goto(leftUrl);
      await p.getByRole('heading', { name: HEADINGS[lang].clinic_unavailable }).waitFor();
      assert.equal(await p.locator('[data-role=pay-now]').count(), 0);
      await shot(p, `link-page-${lang}-clinic_unavailable`);
    }
  });
});

test('the return URL given to Stripe carries no link token, and the page picks up after a 3-D Secure redirect', async () => {
  await inCall(b, async ({ info, doc }) => {
    await doc.getByText('Live').waitFor();
    await requestPayment(doc, '25.00', 'Redirect check');
    const url = await copyLink(doc, 'Redirect check', 'Copy payment link');
    const token = url.split('#link=')[1];
    const patient = await page(b);
    const sent = returnUrlsSent(patient, info);
    await patient.goto(url);
    await pay(patient, 'Redirect check', '4000 0025 0000 3155');
    // The 3-D Secure challenge opens: the confirm has gone to the simulator with its return_url.
    const frame = patient.locator('iframe[name=stripe-sim-3ds-frame]');
    await frame.waitFor();
    assert.equal(sent.length, 1, `one confirm: ${JSON.stringify(sent)}`);
    const returnUrl = sent[0];
    assert.ok(returnUrl, 'a return_url is sent (Stripe requires one)');
    assert.ok(!returnUrl.includes(token) && !returnUrl.includes(token.split('.').pop()), `no token in ${returnUrl}`);
    assert.ok(!returnUrl.includes('link='), `no link parameter in ${returnUrl}`);
    assert.equal(new URL(returnUrl).origin + new URL(returnUrl).pathname, `${info.hub_url}/pay`, 'back to the pay page');
    // What Stripe does when the bank's page is a redirect rather than a frame: the challenge at
    // the top level, then back to return_url with payment_intent, its client secret and
    // redirect_status appended. The page must carry on from there without a token in the URL.
    await patient.goto(await frame.getAttribute('src'));
    await patient.getByRole('button', { name: 'Complete authentication' }).click();
    await patient.waitForURL((u) => u.href.startsWith(`${info.hub_url}/pay`));
    const done = patient.locator('[data-confirmation]');
    await done.getByText('Payment complete').waitFor({ timeout: 20000 });
    assert.match(await done.textContent(), /\$25\.00[\s\S]*Redirect check/);
    // Stripe's parameters (the client secret among them) are taken off the address bar.
    assert.ok(!patient.url().includes('payment_intent_client_secret'), patient.url());
    await shot(patient, 'link-6-after-3ds-redirect');
    await doc.getByRole('region', { name: 'Payment received' }).getByText('Payment received').waitFor();
    // A reload afterwards still finds the link: already paid.
    await patient.reload();
    await patient.getByRole('heading', { name: 'This payment is already paid' }).waitFor();
  });
});

/** The link's payment as the hub gives it to the link page. */
async function linkView(url) {
  const [base, token] = url.split('#link=');
  const r = await fetch(`${new URL(base).origin}/v1/pay-link`, { headers: { authorization: `Bearer ${token}` } });
  assert.equal(r.status, 200);
  return r.json();
}

test('a link changed while Stripe.js loads: the card form pays the link shown, never the one before', async () => {
  await inCall(b, async ({ info, doc }) => {
    await doc.getByText('Live').waitFor();
    await requestPayment(doc, '21.00', 'Race first');
    const first = await copyLink(doc, 'Race first', 'Copy payment link');
    await requestPayment(doc, '22.00', 'Race second');
    const second = await copyLink(doc, 'Race second', 'Copy payment link');
    const [a, bView] = [await linkView(first), await linkView(second)];
    assert.notEqual(a.payment.reference, bView.payment.reference);

    const patient = await page(b);
    // Stripe.js is held back until the link has changed.
    const { stripe_js_url: jsUrl } = await (await fetch(`${info.hub_url}/v1/client-config`)).json();
    let release;
    const held = new Promise((r) => { release = r; });
    let requested;
    const asked = new Promise((r) => { requested = r; });
    await patient.route((u) => u.href.startsWith(jsUrl), async (route) => { requested(); await held; await route.continue(); });
    const confirms = [];
    patient.on('request', (r) => {
      if (r.method() === 'POST' && r.url().endsWith('/confirm')) confirms.push(r.url());
    });

    await patient.goto(first);
    await patient.locator('article', { hasText: 'Race first' }).getByRole('button', { name: 'Pay Now' }).click();
    await asked;
    // The patient opens the second link in the same tab while the first one's form is loading.
    await patient.evaluate((hash) => { location.hash = hash; }, `#link=${second.split('#link=')[1]}`);
    const shown = patient.locator('article', { hasText: 'Race second' });
    await shown.getByText('$22.00').waitFor();
    release();
    // Stripe.js has run (and with it whatever the page does once it is loaded) before this returns.
    await patient.waitForFunction(() => !!window.Stripe);
    assert.equal(await patient.locator('article', { hasText: 'Race first' }).count(), 0, 'only the second link is shown');
    assert.equal(await shown.getAttribute('data-payment-id'), bView.payment.payment_id);
    // Whatever the page offers now (a Pay Now button or an open form), paying pays what it shows.
    const payNow = shown.locator('[data-role=pay-now]');
    const confirmSent = patient.waitForRequest((r) => r.method() === 'POST' && r.url().endsWith('/confirm'));
    await pay(patient, 'Race second', '4242 4242 4242 4242', { open: (await payNow.count()) > 0 });
    const sentTo = (await confirmSent).url();
    assert.ok(sentTo.includes(`/v1/payment_intents/${bView.payment.reference}/confirm`),
      `the confirm went to the shown link's PaymentIntent ${bView.payment.reference}, not ${a.payment.reference}: ${sentTo}`);
    await patient.locator('[data-confirmation]').getByText('$22.00').waitFor({ timeout: 20000 });
    assert.equal(confirms.length, 1, `one confirm: ${confirms}`);
    await doc.locator('li[data-status=succeeded]', { hasText: 'Race second' }).waitFor();
    assert.equal((await linkView(first)).state, 'payable', 'the first link is still unpaid');
  });
});
