// End-to-end: real pages in headless Chromium against `callpay demo`.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { browser, page, shot, requestPayment, pay, withDemo, inCall, clinicianUrl, simFaults, returnUrlsSent } from './harness.mjs';

let b;
before(async () => { b = await browser(); });
after(async () => { await b.close(); });

test('clinic admin removes, then links Stripe through the simulator OAuth page', async () => {
  await withDemo(async (info) => {
    const admin = await page(b);
    await admin.goto(`${info.hub_url}/admin/client-payment?clinic=${info.clinic_id}#token=${info.clinic_admin_token}`);
    await admin.getByText('Linked to acct_').waitFor();
    await admin.getByText('Clinic: Harbour Clinic').waitFor();
    await shot(admin, 'admin-1-linked');
    // Edit shows the linked account as Stripe has it, with its dashboard.
    await admin.getByRole('button', { name: 'Edit' }).click();
    const details = admin.locator('#account-details');
    await details.getByText('Can take payments').waitFor();
    const shown = await details.textContent();
    for (const part of ['Harbour Clinic', 'AU', 'Yes', 'acct_']) assert.ok(shown.includes(part), `${part} in ${shown}`);
    assert.match(await details.getByRole('link', { name: 'Open the Stripe dashboard' }).getAttribute('href'), /\/dashboard$/);
    await shot(admin, 'admin-1b-account-details');
    await admin.getByRole('button', { name: 'Remove' }).click();
    const dialog = admin.getByRole('dialog');
    await dialog.getByRole('button', { name: 'Remove account' }).waitFor();
    await shot(admin, 'admin-2-confirm-remove');
    await dialog.getByRole('button', { name: 'Remove account' }).click();
    await admin.getByText('Not linked').waitFor();
    await admin.getByRole('button', { name: 'Go To Stripe' }).click();
    await admin.getByText('would like to connect to your Stripe account').waitFor();
    await admin.locator('input[name=account][value=new]').check();
    await admin.getByLabel('New account name').fill('Harbour Clinic Pty Ltd');
    await shot(admin, 'admin-3-stripe-consent');
    await admin.getByRole('button', { name: 'Connect my Stripe account' }).click();
    await admin.getByRole('heading', { name: 'Stripe account linked' }).waitFor();
    assert.match(await admin.locator('#outcome').textContent(), /Harbour Clinic Pty Ltd/);
    await shot(admin, 'admin-4-linked-callback');
    await admin.getByRole('link', { name: 'Back to Client Payment' }).click();
    await admin.getByText('Linked to acct_').waitFor();
    assert.match(await admin.locator('#stripe-status').textContent(), /Harbour Clinic Pty Ltd.*Cam \(clinic admin\)/);
    // The audit log reads as sentences, not codes.
    await admin.locator('#audit').getByText('linked Stripe account acct_').first().waitFor();
    assert.equal(await admin.locator('#audit').getByText('stripe.linked').count(), 0);
    await shot(admin, 'admin-5-relinked-with-audit');
  });
});

test('clinician requests $50.00, patient pays with 4242, both see it', async () => {
  await inCall(b, async ({ doc, pat }) => {
    await doc.getByText('Live').waitFor();
    await pat.getByText('Live').waitFor();
    await requestPayment(doc, '50.00', 'Follow-up consultation');
    const item = pat.locator('article', { hasText: 'Follow-up consultation' });
    await item.getByText('$50.00').waitFor();
    await item.getByText('Harbour Clinic').waitFor();
    await shot(pat, 'pay-1-patient-sees-request');
    await item.getByRole('button', { name: 'Pay Now' }).click();
    await item.getByLabel('Card number').waitFor();
    await doc.getByText('Patient is paying').waitFor();
    await pay(pat, 'Follow-up consultation', '4242 4242 4242 4242', { open: false });
    const done = item.locator('[data-confirmation]');
    await done.getByText('Payment complete').waitFor({ timeout: 15000 });
    const text = await done.textContent();
    for (const part of ['$50.00', 'Follow-up consultation', 'Visa', '4242', 's•••@example.com', 'pi_']) {
      assert.ok(text.includes(part), `confirmation shows ${part}: ${text}`);
    }
    await shot(pat, 'pay-2-patient-confirmation-phone');
    const popup = doc.getByRole('region', { name: 'Payment received' });
    await popup.getByText('Payment received').waitFor();
    assert.match(await popup.textContent(), /\$50\.00.*Follow-up consultation/);
    assert.match(await doc.locator('#announce').textContent(), /Payment received/);
    await shot(doc, 'pay-3-clinician-popup');
    await doc.getByRole('button', { name: 'Close' }).click();
    await doc.locator('li[data-status=succeeded]').getByText('Paid').waitFor();
  }, { patientViewport: { width: 390, height: 844 } });
});

test('3-D Secure: completed, then failed and retried', async () => {
  await inCall(b, async ({ doc, pat }) => {
    await requestPayment(doc, '70.00', 'Specialist review');
    await pat.locator('article', { hasText: 'Specialist review' }).getByRole('button', { name: 'Pay Now' }).waitFor();
    let item = await pay(pat, 'Specialist review', '4000 0025 0000 3155');
    const challenge = pat.frameLocator('iframe[name=stripe-sim-3ds-frame]');
    await challenge.getByRole('button', { name: 'Complete authentication' }).waitFor();
    await shot(pat, '3ds-1-challenge');
    await challenge.getByRole('button', { name: 'Complete authentication' }).click();
    await item.getByText('Payment complete').waitFor({ timeout: 15000 });
    await doc.getByRole('region', { name: 'Payment received' }).getByText('Payment received').waitFor();

    await requestPayment(doc, '30.00', 'Prescription');
    await pat.locator('article', { hasText: 'Prescription' }).getByRole('button', { name: 'Pay Now' }).waitFor();
    item = await pay(pat, 'Prescription', '4000 0025 0000 3155');
    await challenge.getByRole('button', { name: 'Fail authentication' }).click();
    await item.locator('[data-role=pay-error]').getByText('did not go through').waitFor();
    await shot(pat, '3ds-2-failed');
    await doc.locator('li', { hasText: 'Prescription' }).getByText('Failed').waitFor();
    await pay(pat, 'Prescription', '4242 4242 4242 4242', { open: false });
    await item.getByText('Payment complete').waitFor({ timeout: 15000 });
  });
});

test('3-D Secure by redirect: the return URL carries no join token, and the panel picks up after it', async () => {
  await inCall(b, async ({ info, doc, pat }) => {
    await requestPayment(doc, '45.00', 'Redirected review');
    await pat.locator('article', { hasText: 'Redirected review' }).getByRole('button', { name: 'Pay Now' }).waitFor();
    const sent = returnUrlsSent(pat, info);
    await pay(pat, 'Redirected review', '4000 0025 0000 3155');
    const frame = pat.locator('iframe[name=stripe-sim-3ds-frame]');
    await frame.waitFor();
    assert.equal(sent.length, 1, `one confirm: ${JSON.stringify(sent)}`);
    const returnUrl = new URL(sent[0]);
    // The fragment holds the patient's join token; Stripe keeps the return URL on the
    // PaymentIntent, so none of it may be there.
    assert.equal(returnUrl.hash, '', `no fragment in ${sent[0]}`);
    assert.ok(!sent[0].includes(info.patient_token), `no join token in ${sent[0]}`);
    assert.equal(returnUrl.origin + returnUrl.pathname, `${info.hub_url}/call/patient`, 'back to the patient panel');
    // The bank's page at the top level, as Stripe does when it redirects, then back with
    // Stripe's parameters: the panel reconnects to the call and shows the payment paid.
    await pat.goto(await frame.getAttribute('src'));
    await pat.getByRole('button', { name: 'Complete authentication' }).click();
    await pat.waitForURL((u) => u.href.startsWith(`${info.hub_url}/call/patient`));
    const item = pat.locator('article', { hasText: 'Redirected review' });
    await item.getByText('Payment complete').waitFor({ timeout: 20000 });
    assert.ok(!pat.url().includes('payment_intent_client_secret'), pat.url());
    await shot(pat, '3ds-3-after-redirect');
    await doc.getByRole('region', { name: 'Payment received' }).getByText('Payment received').waitFor();
  });
});

test('a declined card shows a clear message, then a good card pays', async () => {
  await inCall(b, async ({ doc, pat }) => {
    await requestPayment(doc, '50.00', 'Consultation');
    await pat.locator('article', { hasText: 'Consultation' }).getByRole('button', { name: 'Pay Now' }).waitFor();
    const item = await pay(pat, 'Consultation', '4000 0000 0000 9995');
    await item.locator('[data-role=pay-error]').getByText('insufficient funds').waitFor();
    await shot(pat, 'decline-1-message');
    await doc.locator('li', { hasText: 'Consultation' }).getByText('insufficient funds').waitFor();
    await pay(pat, 'Consultation', '4242 4242 4242 4242', { open: false });
    await item.getByText('Payment complete').waitFor({ timeout: 15000 });
    await doc.getByRole('region', { name: 'Payment received' }).getByText('Payment received').waitFor();
  });
});

test('the clinician cancels; the patient is told', async () => {
  await inCall(b, async ({ doc, pat }) => {
    await requestPayment(doc, '12.50', 'Letter');
    await pat.locator('article', { hasText: 'Letter' }).getByText('$12.50').waitFor();
    // Cancelling takes a second, explicit step; "Keep it" changes nothing.
    await doc.getByRole('button', { name: 'Cancel request' }).click();
    await doc.getByText('Cancel this request?').waitFor();
    await doc.getByRole('button', { name: 'Keep it' }).click();
    await doc.locator('li', { hasText: 'Letter' }).getByText('Requested').waitFor();
    await doc.getByRole('button', { name: 'Cancel request' }).click();
    await doc.getByRole('button', { name: 'Yes, cancel it' }).click();
    await pat.locator('article', { hasText: 'Letter' }).getByText('cancelled by the clinic').waitFor();
    await doc.locator('li', { hasText: 'Letter' }).getByText('Cancelled').waitFor();
    await shot(pat, 'cancel-1-patient');
    // The clinician's form validates as the hub does.
    await requestPayment(doc, '0.20', 'Too small');
    await doc.getByText('at least 0.50').waitFor();
    assert.equal(await doc.getByLabel('Amount (AUD)').getAttribute('aria-invalid'), 'true');
    // Fixing the field clears its invalid state; a leading $ is accepted.
    await doc.getByLabel('Amount (AUD)').fill('$50');
    assert.equal(await doc.getByLabel('Amount (AUD)').getAttribute('aria-invalid'), null);
    await doc.getByRole('button', { name: 'Request Payment' }).click();
    await pat.locator('article', { hasText: 'Too small' }).getByText('$50.00').waitFor();
  });
});

test('Pay Now moves focus to the form, and two open forms never share field ids', async () => {
  await inCall(b, async ({ doc, pat }) => {
    await requestPayment(doc, '10.00', 'One');
    await pat.locator('article', { hasText: 'One' }).getByText('$10.00').waitFor();
    await requestPayment(doc, '11.00', 'Two');
    await pat.locator('article', { hasText: 'Two' }).getByText('$11.00').waitFor();
    for (const what of ['One', 'Two']) {
      const item = pat.locator('article', { hasText: what });
      await item.getByRole('button', { name: 'Pay Now' }).click();
      await item.getByLabel('Card number').waitFor();
      assert.equal(await pat.evaluate(() => document.activeElement.type), 'email', `focus in ${what}'s first field`);
    }
    const duplicates = await pat.evaluate(() => {
      const ids = [...document.querySelectorAll('[id]')].map((e) => e.id);
      return ids.filter((id, i) => ids.indexOf(id) !== i);
    });
    assert.deepEqual(duplicates, []);
    await pat.locator('article', { hasText: 'Two' }).getByLabel('Card number').fill('4242 4242 4242 4242');
    assert.equal(await pat.locator('article', { hasText: 'One' }).getByLabel('Card number').inputValue(), '');
  });
});

/**
 * Latin-script words a Bengali page shows, other than what people typed or named (`data`) and
 * an allow-list of names that stay as they are (brands, codes, the product's name).
 */
async function latinWords(p, data) {
  const text = await p.evaluate(() => `${document.title}\n${document.body.innerText}`);
  const allowed = new Set(['callpay', 'AUD', 'CVC', 'Visa', 'English', 'Stripe']);
  let rest = text;
  for (const d of data) rest = rest.split(d).join(' ');
  rest = rest.replace(/\S+@[\w.-]+/g, ' ').replace(/\bpi_\w+/g, ' ');
  return [...new Set(rest.match(/[A-Za-z]{2,}/g) || [])].filter((w) => !allowed.has(w));
}

test('the same flow in Bengali: Bengali digits, declines in our words, no stray English', async () => {
  await inCall(b, async ({ doc, pat }) => {
    await doc.getByRole('heading', { name: 'পেমেন্টের অনুরোধ' }).waitFor();
    assert.equal(await doc.title(), 'পেমেন্টের অনুরোধ · callpay');
    // The amount as the page itself writes amounts: Bengali digits.
    await doc.getByLabel('পরিমাণ (AUD)').fill('৫০.০০');
    await doc.getByLabel('বিবরণ').fill('Consultation');
    await doc.getByRole('button', { name: 'পেমেন্টের অনুরোধ পাঠান' }).click();
    const item = await pay(pat, 'Consultation', '4000000000009995', { lang: 'bn' });
    // Stripe's decline, worded by the catalogue on both screens, not Stripe's English.
    await item.locator('[data-role=pay-error]').getByText('কার্ডে পর্যাপ্ত টাকা নেই').waitFor();
    await doc.locator('li', { hasText: 'Consultation' }).getByText('কার্ডে পর্যাপ্ত টাকা নেই').waitFor();
    await shot(pat, 'bn-0-decline');
    const data = ['Consultation', 'Harbour Clinic', 'Dr Ada Lee', 'Sam Taylor'];
    assert.deepEqual(await latinWords(pat, data), [], 'patient page after a decline');
    assert.deepEqual(await latinWords(doc, data), [], 'clinician page after a decline');
    await item.getByLabel('কার্ড নম্বর').fill('4242424242424242');
    await item.locator('button[data-role=pay]').click();
    await item.getByText('পেমেন্ট সম্পন্ন হয়েছে').waitFor({ timeout: 15000 });
    await doc.locator('#popup').getByText('পেমেন্ট পাওয়া গেছে').waitFor();
    assert.equal(await doc.evaluate(() => document.documentElement.lang), 'bn');
    assert.deepEqual(await latinWords(pat, data), [], 'patient confirmation');
    assert.deepEqual(await latinWords(doc, data), [], 'clinician after the payment');
    await shot(pat, 'bn-1-patient');
    await shot(doc, 'bn-2-clinician');
    // A refusal from the hub is worded from its code, in the page's language.
    await doc.evaluate(() => window.callpay.cancel('pay_not_in_this_call'));
    await doc.locator('#form-error').getByText('এই পেমেন্টটি এই কলের অংশ নয়।').waitFor();
    assert.deepEqual(await latinWords(doc, data), [], 'clinician after a hub refusal');
    // The switch goes back to English.
    await doc.getByLabel('ভাষা').selectOption('en');
    await doc.getByRole('heading', { name: 'Request Payment' }).waitFor();
  }, { lang: 'bn-BD' });
});

test('the demo page shows both panels side by side', async () => {
  await withDemo(async (info) => {
    const p = await page(b, { width: 1400, height: 900 });
    await p.goto(`${info.hub_url}/demo`);
    await p.frameLocator('#clinician').getByRole('button', { name: 'Request Payment' }).waitFor();
    await p.frameLocator('#patient').getByText('Nothing to pay right now.').waitFor();
    await shot(p, 'demo-page');
  });
});

test('an org admin asks for the app on a new clinic and the service desk approves it', async () => {
  await withDemo(async (info) => {
    const put = await fetch(`${info.hub_url}/v1/orgs/org_demo/clinics/clinic_new`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${info.operator_token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'Northside Clinic' }),
    });
    assert.equal(put.status, 200);
    const org = await page(b);
    await org.goto(`${info.hub_url}/admin/client-payment?clinic=clinic_new#token=${info.org_admin_token}`);
    await org.getByText('Not enabled for this clinic.').waitFor();
    await org.getByText('Clinic: Northside Clinic').waitFor();
    await org.getByLabel('Service-desk ticket of the authorised telehealth manager').fill('SD-2041');
    await org.getByRole('button', { name: 'Ask for the payment app' }).click();
    await org.getByText('is waiting for the service desk').waitFor();
    await shot(org, 'enable-1-org-admin-requested');
    const desk = await page(b);
    await desk.goto(`${info.hub_url}/admin/client-payment?clinic=clinic_new#token=${info.operator_token}`);
    const request = desk.locator('li', { hasText: 'SD-2041' });
    // The desk sees which clinic, who asked and when, not bare ids.
    assert.match(await request.textContent(), /Northside Clinic \(org_demo\), asked by Olivia \(org admin\) on .*ticket SD-2041/);
    await request.getByRole('button', { name: 'Approve' }).click();
    await desk.getByText('Enabled for this clinic.').waitFor();
    await shot(desk, 'enable-2-operator-approved');
    await org.reload();
    await org.getByText('Enabled for this clinic.').waitFor();
    await org.getByRole('button', { name: 'Go To Stripe' }).waitFor();
    await org.getByText('approved the payment app').waitFor();
  });
});

test('a clinic admin at a clinic without the app can ask for it', async () => {
  await withDemo(async (info) => {
    const off = await fetch(`${info.hub_url}/v1/clinics/clinic_demo/disable`, {
      method: 'POST', headers: { authorization: `Bearer ${info.operator_token}` },
    });
    assert.equal(off.status, 200);
    const admin = await page(b);
    await admin.goto(`${info.hub_url}/admin/client-payment?clinic=${info.clinic_id}#token=${info.clinic_admin_token}`);
    await admin.getByText('Not enabled for this clinic.').waitFor();
    await admin.getByLabel('Service-desk ticket of the authorised telehealth manager').fill('SD-77');
    await admin.getByRole('button', { name: 'Ask for the payment app' }).click();
    await admin.getByText('is waiting for the service desk').waitFor();
    await admin.locator('#audit').getByText('asked for the payment app').waitFor();
    await shot(admin, 'enable-3-clinic-admin-requested');
  });
});

test('switching language relabels an open pay form without losing what was typed', async () => {
  await inCall(b, async ({ doc, pat }) => {
    await requestPayment(doc, '20.00', 'Script');
    const item = pat.locator('article', { hasText: 'Script' });
    await item.getByRole('button', { name: 'Pay Now' }).click();
    await item.getByLabel('Email for your receipt').fill('sam@example.com');
    await pat.getByLabel('Language').selectOption('bn');
    await item.getByLabel('রসিদের জন্য ইমেইল').waitFor();
    assert.equal(await item.getByLabel('রসিদের জন্য ইমেইল').inputValue(), 'sam@example.com');
  });
});

test('a clinician who reloads while the patient is typing still sees them paying', async () => {
  await inCall(b, async ({ doc, pat }) => {
    await requestPayment(doc, '40.00', 'Dressing change');
    const item = pat.locator('article', { hasText: 'Dressing change' });
    await item.getByRole('button', { name: 'Pay Now' }).click();
    await item.getByLabel('Email for your receipt').fill('sam@exa');
    await doc.locator('li', { hasText: 'Dressing change' }).getByText('Patient is paying').waitFor();
    await doc.reload();
    await doc.getByText('Live').waitFor();
    await doc.locator('li', { hasText: 'Dressing change' }).getByText('Patient is paying').waitFor();
    await shot(doc, 'reload-1-clinician-still-sees-paying');
  });
});

test('with every webhook lost, the clinician still gets one payment-received pop-up', async () => {
  await inCall(b, async ({ info, doc, pat }) => {
    await simFaults(info, { webhook_drop_all: true });
    await requestPayment(doc, '25.00', 'Lost webhook');
    await pat.locator('article', { hasText: 'Lost webhook' }).getByRole('button', { name: 'Pay Now' }).waitFor();
    const item = await pay(pat, 'Lost webhook', '4242 4242 4242 4242');
    await item.getByText('Payment complete').waitFor({ timeout: 15000 });
    await doc.getByRole('region', { name: 'Payment received' }).getByText('Payment received').waitFor();
    await shot(doc, 'lost-webhook-1-clinician-popup');
    const deliveries = await fetch(`${info.stripe_url}/_sim/deliveries`, {
      headers: { authorization: `Bearer ${info.stripe_secret_key}` },
    }).then((r) => r.json());
    assert.equal(deliveries.data.length, 0, 'no webhook was delivered');
  });
});

test('a request made while reconnecting is kept, shown as sending, and sent once the connection is back', async () => {
  await inCall(b, async ({ doc, pat }) => {
    await doc.getByText('Live').waitFor();
    let blocked = true;
    await doc.routeWebSocket(/\/ws/, (ws) => {
      if (blocked) ws.close({ code: 1011, reason: 'test: hub unreachable' });
      else ws.connectToServer();
    });
    await doc.evaluate(() => window.callpay.ws.close());
    await doc.getByText('Reconnecting…').waitFor();
    await requestPayment(doc, '35.00', 'Queued while offline');
    await doc.getByRole('button', { name: 'Sending…' }).waitFor();
    await doc.locator('#queued').getByText('will be sent as soon as the connection is back').waitFor();
    assert.equal(await doc.getByLabel('Amount (AUD)').inputValue(), '35.00', 'the form keeps what was typed');
    assert.equal(await doc.getByLabel('Description').inputValue(), 'Queued while offline');
    await shot(doc, 'reconnect-1-request-kept-while-offline');
    blocked = false;
    await doc.getByText('Live').waitFor({ timeout: 20000 });
    await doc.locator('li', { hasText: 'Queued while offline' }).waitFor();
    await pat.locator('article', { hasText: 'Queued while offline' }).getByText('$35.00').waitFor();
    assert.equal(await doc.getByLabel('Description').inputValue(), '', 'cleared once the hub has it');
    assert.equal(await doc.locator('li', { hasText: 'Queued while offline' }).count(), 1, 'exactly one request');
    await shot(doc, 'reconnect-2-request-sent');
  });
});

test('a request refused because Stripe was unreachable, sent again, stays one payment', async () => {
  await inCall(b, async ({ info, doc, pat }) => {
    await doc.getByText('Live').waitFor();
    // More failures than the hub's attempts (3): the request is refused with stripe_unavailable.
    await simFaults(info, { api_errors: 3, api_error_status: 503 });
    await requestPayment(doc, '45.00', 'Retried after outage');
    await doc.locator('#form-error').getByText('Stripe').waitFor();
    await shot(doc, 'outage-1-refused');
    // The form kept the request; sending it again finishes the payment the hub recorded.
    await doc.getByRole('button', { name: 'Request Payment' }).click();
    await pat.locator('article', { hasText: 'Retried after outage' }).getByText('$45.00').waitFor();
    await doc.locator('li', { hasText: 'Retried after outage' }).first().waitFor();
    // After a reload the clinician sees every payment the hub has for the call, a refused one
    // still being created included: there must be only the one.
    await doc.reload();
    await doc.getByText('Live').waitFor();
    await doc.locator('li', { hasText: 'Retried after outage' }).first().waitFor();
    assert.equal(await doc.locator('li', { hasText: 'Retried after outage' }).count(), 1, 'one payment, none left behind');
    await shot(doc, 'outage-2-one-payment');
  });
});

test('a patient who reloads while the bank is confirming sees Confirming, never Pay Now', async () => {
  await inCall(b, async ({ info, doc, pat }) => {
    await simFaults(info, { processing_delay_ms: 4000 });
    await requestPayment(doc, '60.00', 'Bank confirming');
    await pat.locator('article', { hasText: 'Bank confirming' }).getByRole('button', { name: 'Pay Now' }).waitFor();
    await pay(pat, 'Bank confirming', '4242 4242 4242 4242');
    await pat.getByText('Confirming with your bank…').waitFor();
    await pat.reload();
    const item = pat.locator('article', { hasText: 'Bank confirming' });
    await item.getByText('Confirming with your bank…').waitFor();
    assert.equal(await item.getByRole('button', { name: 'Pay Now' }).count(), 0, 'no second payment offered');
    await shot(pat, 'reload-2-patient-confirming');
    await item.getByText('Payment complete').waitFor({ timeout: 15000 });
    await doc.getByRole('region', { name: 'Payment received' }).getByText('Payment received').waitFor();
  }, { patientViewport: { width: 390, height: 844 } });
});

test('the payment-received notice never takes focus; Escape and Close dismiss it and focus stays put', async () => {
  await inCall(b, async ({ doc, pat }) => {
    await requestPayment(doc, '20.00', 'First visit');
    await pat.locator('article', { hasText: 'First visit' }).getByRole('button', { name: 'Pay Now' }).waitFor();
    const description = doc.getByLabel('Description');
    await description.click();
    await description.pressSequentially('Follow-up vis');
    await pay(pat, 'First visit', '4242 4242 4242 4242');
    const notice = doc.getByRole('region', { name: 'Payment received' });
    await notice.waitFor();
    // Typing goes on where it was: no letter lost to the notice.
    await doc.keyboard.type('it');
    assert.equal(await description.inputValue(), 'Follow-up visit');
    assert.equal(await doc.evaluate(() => document.activeElement.id), 'description');
    await shot(doc, 'focus-1-notice-while-typing');
    await doc.keyboard.press('Escape');
    await notice.waitFor({ state: 'hidden' });
    assert.equal(await doc.evaluate(() => document.activeElement.id), 'description', 'Escape keeps focus');
    // Close returns focus to where the clinician was.
    await doc.evaluate(() => { document.getElementById('popup').hidden = false; });
    await doc.getByRole('button', { name: 'Close' }).click();
    await notice.waitFor({ state: 'hidden' });
    assert.equal(await doc.evaluate(() => document.activeElement.id), 'description', 'Close gives focus back');
  });
});

test('a patient typing an e-mail keeps text, focus and caret while other requests arrive and change', async () => {
  await inCall(b, async ({ doc, pat }) => {
    await requestPayment(doc, '15.00', 'Script renewal');
    const item = pat.locator('article', { hasText: 'Script renewal' });
    await item.getByRole('button', { name: 'Pay Now' }).click();
    const email = item.getByLabel('Email for your receipt');
    await email.click();
    await email.pressSequentially('sam@exa');
    // A second request arrives and the first one's status changes (the page reported progress).
    await requestPayment(doc, '90.00', 'Second request');
    await pat.locator('article', { hasText: 'Second request' }).getByText('$90.00').waitFor();
    await doc.locator('li', { hasText: 'Second request' }).waitFor();
    await pat.keyboard.type('mple.com');
    assert.equal(await email.inputValue(), 'sam@example.com', 'no letter lost');
    assert.equal(await pat.evaluate(() => document.activeElement.type), 'email', 'focus stayed in the field');
    await pat.keyboard.press('ArrowLeft');
    await pat.keyboard.type('X');
    assert.equal(await email.inputValue(), 'sam@example.coXm', 'caret kept its place');
    await shot(pat, 'typing-1-patient-keeps-email');
  }, { patientViewport: { width: 390, height: 844 } });
});

test('the join token never appears in a WebSocket URL', async () => {
  await withDemo(async (info) => {
    const doc = await page(b);
    const urls = [];
    doc.on('websocket', (ws) => urls.push(ws.url()));
    await doc.goto(clinicianUrl(info));
    await doc.getByText('Live').waitFor();
    assert.ok(urls.length >= 1, 'the page opened its socket');
    for (const url of urls) {
      assert.ok(!url.includes(info.clinician_token) && !url.includes('token='), `no token in ${url}`);
    }
  });
});

test('3-D Secure in Bengali: the bank page and the card form speak the page language', async () => {
  await inCall(b, async ({ doc, pat }) => {
    await doc.getByLabel('পরিমাণ (AUD)').fill('৭০');
    await doc.getByLabel('বিবরণ').fill('Review');
    await doc.getByRole('button', { name: 'পেমেন্টের অনুরোধ পাঠান' }).click();
    const item = await pay(pat, 'Review', '4000002500003155', { lang: 'bn' });
    const bank = pat.frameLocator('iframe[name=stripe-sim-3ds-frame]');
    await bank.getByRole('button', { name: 'যাচাই সম্পন্ন করুন' }).waitFor();
    const text = await pat.frame({ name: 'stripe-sim-3ds-frame' }).evaluate(() => document.body.innerText);
    const latin = (text.replace(/[\d.]+ AUD/g, ' ').match(/[A-Za-z]{2,}/g) || []);
    assert.deepEqual(latin, [], `the bank page in Bengali: ${text}`);
    await shot(pat, 'bn-3-3ds');
    await bank.getByRole('button', { name: 'যাচাই সম্পন্ন করুন' }).click();
    await item.getByText('পেমেন্ট সম্পন্ন হয়েছে').waitFor({ timeout: 15000 });
  }, { lang: 'bn-BD' });
});

test('the admin page in Bengali has no stray English', async () => {
  await withDemo(async (info) => {
    // Some history for the audit log: the desk turns the app off, the clinic admin asks again,
    // the desk approves.
    const call = (token, method, path, body) => fetch(`${info.hub_url}${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: body ? JSON.stringify(body) : undefined,
    }).then((r) => r.json());
    await call(info.operator_token, 'POST', '/v1/clinics/clinic_demo/disable');
    const asked = await call(info.clinic_admin_token, 'POST', '/v1/orgs/org_demo/enablement-requests', { clinic_ids: ['clinic_demo'], ticket_ref: 'SD-9' });
    await call(info.operator_token, 'POST', `/v1/enablement-requests/${asked.data[0].id}/approve`);
    const admin = await page(b, { lang: 'bn-BD' });
    await admin.goto(`${info.hub_url}/admin/client-payment?clinic=${info.clinic_id}#token=${info.clinic_admin_token}`);
    await admin.getByText('ক্লিনিক: Harbour Clinic').waitFor();
    await admin.getByRole('button', { name: 'সম্পাদনা' }).click();
    await admin.locator('#account-details').getByText('পেমেন্ট নিতে পারে').waitFor();
    await admin.locator('#audit tr').first().waitFor();
    const data = ['Harbour Clinic', 'Cam (clinic admin)', 'Pat (service desk)', 'demo seed', 'reception@harbour.example', 'SD-9'];
    const text = await admin.evaluate(() => `${document.title}\n${document.body.innerText}`);
    let rest = text;
    for (const d of data) rest = rest.split(d).join(' ');
    rest = rest.replace(/\bacct_\w+/g, ' ').replace(/\b[A-Z]{2}\b/g, ' ');
    const latin = [...new Set(rest.match(/[A-Za-z]{2,}/g) || [])].filter((w) => !['Stripe', 'callpay', 'English'].includes(w));
    assert.deepEqual(latin, [], text);
    await shot(admin, 'bn-4-admin');
  });
});

test('the demo launcher in Bengali has no stray English', async () => {
  await withDemo(async (info) => {
    const p = await page(b, { lang: 'bn-BD', width: 1400, height: 900 });
    await p.goto(`${info.hub_url}/demo`);
    await p.frameLocator('#clinician').getByRole('button', { name: 'পেমেন্টের অনুরোধ পাঠান' }).waitFor();
    const text = await p.evaluate(() => `${document.title}\n${document.body.innerText}`);
    const latin = [...new Set(text.match(/[A-Za-z]{2,}/g) || [])].filter((w) => !['callpay', 'Stripe', 'CVC'].includes(w));
    assert.deepEqual(latin, [], text);
    await shot(p, 'bn-5-demo');
  });
});

/** Latin words left in `text` once `data` (names, descriptions, ids) is taken out. */
function strayEnglish(text, data, allowed = ['Stripe', 'callpay', 'English', 'Visa']) {
  let rest = text;
  for (const d of data) rest = rest.split(d).join(' ');
  rest = rest.replace(/\b(acct|pi|pay|evt|call)_\w+/g, ' ').replace(/\S+@[\w.-]+/g, ' ');
  return [...new Set(rest.match(/[A-Za-z]{2,}/g) || [])].filter((w) => !allowed.includes(w));
}

test('the audit log words a refused Stripe link, names each actor once, and follows a switch to Bengali', async () => {
  await withDemo(async (info) => {
    const admin = await page(b);
    await admin.goto(`${info.hub_url}/admin/client-payment?clinic=${info.clinic_id}#token=${info.clinic_admin_token}`);
    // Start linking another account, then deny it on Stripe's page: a refused `stripe.link`.
    await admin.getByRole('button', { name: 'Edit' }).click();
    await admin.getByRole('button', { name: 'Link another account' }).click();
    await admin.getByRole('button', { name: 'Deny' }).click();
    await admin.getByRole('heading', { name: 'Stripe account not linked' }).waitFor();
    await admin.getByRole('link', { name: 'Back to Client Payment' }).click();
    const refused = admin.locator('#audit tr', { hasText: 'was refused; nothing changed' });
    await refused.waitFor();
    assert.equal(await admin.locator('#audit').getByText('stripe.link').count(), 0, 'no raw action code');
    // Each actor is named once: the role only when the name does not already say it.
    const who = await admin.locator('#audit tr td:nth-child(2)').allTextContents();
    assert.ok(who.includes('Cam (clinic admin)'), who.join(' | '));
    assert.ok(who.every((w) => !/\(.*\).*\(.*\)/.test(w) && w !== 'Stripe (Stripe)'), who.join(' | '));
    const englishDate = await refused.locator('td').first().textContent();
    assert.match(englishDate, /[0-9]/);
    await shot(admin, 'audit-1-refused-link-en');
    // Switch to Bengali: sentences, outcomes and dates follow, with no stray English.
    await admin.getByLabel('Language').selectOption('bn');
    const bnRow = admin.locator('#audit tr', { hasText: 'প্রত্যাখ্যাত হয়েছে; কিছুই বদলায়নি' });
    await bnRow.waitFor();
    const bnDate = await bnRow.locator('td').first().textContent();
    assert.match(bnDate, /[০-৯]/, `the date in Bengali digits: ${bnDate}`);
    assert.doesNotMatch(bnDate, /[0-9A-Za-z]/, `no Latin digits or month names: ${bnDate}`);
    const audit = await admin.locator('#audit').innerText();
    assert.deepEqual(strayEnglish(audit, ['Cam (clinic admin)', 'Harbour Clinic', 'demo seed']), [], audit);
    await shot(admin, 'audit-2-refused-link-bn');
  });
});

test('the Payments tab lists payments with filters and history, links each to Stripe, and speaks Bengali', async () => {
  await inCall(b, async ({ info, doc, pat }) => {
    await requestPayment(doc, '50.00', 'Consultation');
    await pay(pat, 'Consultation', '4242424242424242');
    await doc.locator('#popup').getByText('Payment received').waitFor();
    await requestPayment(doc, '20.00', 'Script renewal');
    await pat.locator('article', { hasText: 'Script renewal' }).waitFor();
    const admin = await page(b);
    await admin.goto(`${info.hub_url}/admin/client-payment?clinic=${info.clinic_id}#token=${info.clinic_admin_token}`);
    await admin.getByRole('tab', { name: 'Payments' }).click();
    const rows = admin.locator('#payments tr[data-payment-id]');
    await admin.locator('#payments tr', { hasText: 'Script renewal' }).waitFor();
    assert.equal(await rows.count(), 2);
    const paid = admin.locator('#payments tr', { hasText: 'Consultation' });
    assert.match(await paid.innerText(), /Dr Ada Lee[\s\S]*\$50\.00[\s\S]*Paid[\s\S]*Visa ending 4242/);
    // The record links to the payment on the clinic's (simulated) Stripe dashboard.
    const href = await paid.getByRole('link', { name: 'Open in Stripe' }).getAttribute('href');
    assert.match(href, new RegExp(`^${info.stripe_url}/dashboard/acct_\\w+/test/payments/pi_\\w+$`));
    const dash = await page(b);
    await dash.goto(href);
    await dash.locator('#status').getByText('succeeded').waitFor();
    await dash.close();
    // Its history: asked for in the call, then received: through Stripe's event, or read from
    // Stripe when the patient's page said it was done (whichever reached the hub first).
    await paid.getByRole('button', { name: 'History' }).click();
    const history = admin.locator('tr.history');
    await history.getByText('A payment was received.').waitFor();
    assert.match(await history.innerText(), /Dr Ada Lee requested a payment\. \(in the call\)/);
    assert.match(await history.innerText(), /A payment was received\. \((Stripe event evt_\w+|read from Stripe)\)/);
    await shot(admin, 'payments-1-list-en');
    // Filters: a status, a clinician, a day range.
    await admin.getByLabel('Status').selectOption('succeeded');
    await admin.getByRole('button', { name: 'Show' }).click();
    await admin.locator('#payments tr', { hasText: 'Script renewal' }).waitFor({ state: 'detached' });
    assert.equal(await rows.count(), 1);
    await admin.getByLabel('Status').selectOption('requested');
    await admin.getByLabel('Clinician').selectOption({ label: 'Dr Ada Lee' });
    await admin.getByRole('button', { name: 'Show' }).click();
    await admin.locator('#payments tr', { hasText: 'Script renewal' }).waitFor();
    assert.equal(await rows.count(), 1);
    const tomorrow = new Date(Date.now() + 86400000);
    const day = (d) => `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, '0')}-${String(d.getDate()).padStart(2, '0')}`;
    await admin.getByLabel('Status').selectOption('');
    await admin.getByLabel('From').fill(day(tomorrow));
    await admin.getByRole('button', { name: 'Show' }).click();
    await admin.getByText('No payments match.').waitFor();
    await admin.getByLabel('From').fill(day(new Date()));
    await admin.getByLabel('To (inclusive)').fill(day(new Date()));
    await admin.getByRole('button', { name: 'Show' }).click();
    await admin.locator('#payments tr', { hasText: 'Consultation' }).waitFor();
    assert.equal(await rows.count(), 2, 'today, both ends included');
    await paid.getByRole('button', { name: 'History' }).click();
    await history.getByText('A payment was received.').waitFor();
    // The same in Bengali: the table, the filters and the history, with no stray English.
    await admin.getByLabel('Language').selectOption('bn');
    await admin.getByRole('tab', { name: 'পেমেন্টসমূহ' }).waitFor();
    await paid.getByText('পরিশোধিত').waitFor();
    await history.getByText('একটি পেমেন্ট পাওয়া গেছে।').waitFor();
    assert.match(await paid.locator('td').first().textContent(), /[০-৯]/, 'dates in Bengali digits');
    const panel = await admin.locator('#panel-payments').innerText();
    const tabs = await admin.locator('#tabs').innerText();
    const data = ['Consultation', 'Script renewal', 'Dr Ada Lee'];
    assert.deepEqual(strayEnglish(`${tabs}\n${panel}`, data), [], panel);
    const options = (await admin.locator('#payment-filters option').allTextContents()).join(' ');
    assert.deepEqual(strayEnglish(options, data), [], options);
    await shot(admin, 'payments-2-list-bn');
    // An organisation's admin picks the clinic: this one, every clinic of the organisation, or
    // another (here a new clinic with no payments yet).
    await fetch(`${info.hub_url}/v1/orgs/org_demo/clinics/clinic_east`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${info.operator_token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'East Clinic' }),
    });
    const org = await page(b);
    await org.goto(`${info.hub_url}/admin/client-payment?clinic=${info.clinic_id}#token=${info.org_admin_token}`);
    await org.getByRole('tab', { name: 'Payments' }).click();
    const orgRows = org.locator('#payments tr[data-payment-id]');
    await org.locator('#payments tr', { hasText: 'Consultation' }).waitFor();
    assert.equal(await orgRows.count(), 2);
    await org.getByLabel('Clinic', { exact: true }).selectOption({ label: 'East Clinic' });
    await org.getByRole('button', { name: 'Show' }).click();
    await org.getByText('No payments match.').waitFor();
    await org.getByLabel('Clinic', { exact: true }).selectOption({ label: 'Every clinic of the organisation' });
    await org.getByRole('button', { name: 'Show' }).click();
    await org.locator('#payments tr', { hasText: 'Consultation' }).waitFor();
    assert.equal(await orgRows.count(), 2, "both of this clinic's payments, in the organisation's list");
    await org.getByLabel('Language').selectOption('bn');
    await org.getByLabel('ক্লিনিক', { exact: true }).waitFor();
    const picks = await org.locator('#f-clinic option').allTextContents();
    assert.deepEqual(picks, ['এই ক্লিনিক', 'প্রতিষ্ঠানের সব ক্লিনিক', 'East Clinic']);
    await org.close();
  });
});
