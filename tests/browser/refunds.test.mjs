// Refunds and reports in real pages: a clinic admin refunds part then the rest from the
// Payments tab while the patient is still in the call; the clinician refunds from the panel;
// the Reports tab draws its chart and downloads a CSV whose content is checked; and the same
// in Bengali with no stray English.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { browser, page, shot, requestPayment, pay, inCall } from './harness.mjs';

let b;
before(async () => { b = await browser(); });
after(async () => { await b.close(); });

async function paid(doc, pat, dollars, description) {
  await requestPayment(doc, dollars, description);
  await pay(pat, description, '4242424242424242');
  await doc.locator('#popup').getByText('Payment received').waitFor({ timeout: 15000 });
  await doc.getByRole('button', { name: 'Close' }).click();
}

function adminUrl(info) {
  return `${info.hub_url}/admin/client-payment?clinic=${info.clinic_id}#token=${info.clinic_admin_token}`;
}

/**
 * A clinic admin's page on its Payments tab (`tab`, named in the page's language), and the row
 * of the payment described `description`.
 */
async function paymentsTab(info, description, { lang, tab = 'Payments' } = {}) {
  const admin = await page(b, lang ? { lang } : {});
  await admin.goto(adminUrl(info));
  await admin.getByRole('tab', { name: tab }).click();
  return { admin, row: admin.locator('#payments tr[data-payment-id]', { hasText: description }) };
}

test('a partial then a full refund from the admin page, seen by the patient still in the call', async () => {
  await inCall(b, async ({ info, doc, pat }) => {
    await paid(doc, pat, '50.00', 'Consultation');
    const { admin, row } = await paymentsTab(info, 'Consultation');
    await row.getByRole('button', { name: 'Refund' }).click();
    const form = admin.locator('tr.refund');
    assert.equal(await form.getByLabel('Amount to refund').inputValue(), '50.00', 'all that remains, offered');
    await form.getByLabel('Amount to refund').fill('20.00');
    await form.getByLabel('Reason').selectOption('requested_by_customer');
    // A double click sends one refund.
    await form.getByRole('button', { name: 'Refund now' }).dblclick();
    await admin.getByText('$20.00 refunded.').waitFor();
    const card = pat.locator('[data-confirmation]');
    await card.locator('[data-role=refunded]').getByText('$20.00').waitFor();
    await doc.locator('li[data-status=partially_refunded]').getByText('$20.00 refunded').waitFor();
    await shot(pat, 'refund-1-patient-partial');
    await row.getByRole('button', { name: 'Refund' }).click();
    assert.equal(await form.getByLabel('Amount to refund').inputValue(), '30.00');
    await form.getByRole('button', { name: 'Refund now' }).click();
    await admin.getByText('$30.00 refunded.').waitFor();
    await card.locator('[data-role=refunded]').getByText('$50.00').waitFor();
    await doc.locator('li[data-status=refunded]').waitFor();
    await row.locator('td[data-status=refunded]').waitFor();
    assert.equal(await row.getByRole('button', { name: 'Refund' }).count(), 0, 'nothing left to refund');
    await shot(admin, 'refund-2-admin-full');
    const refunds = await fetch(`${info.stripe_url}/v1/refunds?limit=100`, {
      headers: { authorization: `Bearer ${info.stripe_secret_key}`, 'stripe-account': (await (await fetch(`${info.hub_url}/v1/clinics/${info.clinic_id}`, { headers: { authorization: `Bearer ${info.clinic_admin_token}` } })).json()).stripe.account },
    }).then((r) => r.json());
    assert.deepEqual(refunds.data.map((r) => r.amount).sort(), [2000, 3000], 'one Stripe refund per click of a form');
  });
});

test('the clinician refunds from the panel and the patient sees it', async () => {
  await inCall(b, async ({ doc, pat }) => {
    await paid(doc, pat, '40.00', 'Physio session');
    const item = doc.locator('li', { hasText: 'Physio session' });
    await item.getByRole('button', { name: 'Refund' }).click();
    await item.getByLabel('Amount to refund').fill('15');
    await item.getByLabel('Reason').selectOption('duplicate');
    await item.getByRole('button', { name: 'Refund now' }).click();
    await item.getByText('$15.00 refunded').waitFor();
    await pat.locator('[data-confirmation] [data-role=refunded]').getByText('$15.00').waitFor();
    // More than remains is refused in words, not codes.
    await item.getByRole('button', { name: 'Refund' }).click();
    await item.getByLabel('Amount to refund').fill('30');
    await item.getByRole('button', { name: 'Refund now' }).click();
    await item.getByText('That is more than remains to refund on this payment.').waitFor();
    await shot(doc, 'refund-3-clinician');
  });
});

test('a report with its chart, and a CSV download whose content is checked', async () => {
  await inCall(b, async ({ info, doc, pat }) => {
    await paid(doc, pat, '50.00', '=Consult');
    await paid(doc, pat, '30.00', 'Review');
    const admin = await page(b);
    await admin.goto(adminUrl(info));
    await admin.getByRole('tab', { name: 'Reports' }).click();
    await admin.getByRole('button', { name: 'Show report' }).click();
    const net = admin.locator('[data-total=net]');
    await net.getByText('$80.00').waitFor();
    assert.equal(await admin.locator('[data-total=average]').textContent(), '$40.00');
    const bars = admin.locator('#r-chart svg rect');
    const today = new Date();
    const iso = `${today.getFullYear()}-${String(today.getMonth() + 1).padStart(2, '0')}-${String(today.getDate()).padStart(2, '0')}`;
    assert.equal(await bars.count(), today.getDate(), 'one bar per day of the month so far');
    assert.equal(await admin.locator(`#r-chart rect[data-date="${iso}"]`).getAttribute('data-net'), '8000');
    await admin.locator('#r-clinicians').getByText('Dr Ada Lee').waitFor();
    await shot(admin, 'report-1-chart');
    const [download] = await Promise.all([admin.waitForEvent('download'), admin.getByRole('button', { name: 'Download CSV' }).click()]);
    assert.match(download.suggestedFilename(), /^callpay-clinic_demo-\d{4}-\d{2}-\d{2}-\d{4}-\d{2}-\d{2}\.csv$/);
    const bytes = readFileSync(await download.path());
    assert.deepEqual([...bytes.subarray(0, 3)], [0xef, 0xbb, 0xbf], 'UTF-8 byte-order mark');
    const lines = bytes.toString('utf8').slice(1).trim().split('\r\n');
    assert.equal(lines.length, 3, lines.join('\n'));
    assert.match(lines[0], /^date,time,payment_id,clinic,clinician,description,status/);
    assert.ok(lines.some((l) => l.includes(",'=Consult,") && l.includes('Dr Ada Lee') && l.includes('50.00')), lines.join('\n'));
    assert.ok(!lines.some((l) => l.includes(',=Consult')), 'no formula reaches a cell');
  });
});

test('the refund form is updated where it stands when its figures arrive, so a click as they land is not lost', async () => {
  // The form opens at once with the list's figures and is redrawn when the hub's count of what
  // remains arrives. A form rebuilt, or taken out of the page and put back, then lost a click
  // landing at that moment: the refund was never sent (likely how the Bengali test below
  // failed once in a fresh-clone run).
  await inCall(b, async ({ info, doc, pat }) => {
    await paid(doc, pat, '50.00', 'Consultation');
    const { admin, row } = await paymentsTab(info, 'Consultation');
    let release;
    const held = new Promise((r) => { release = r; });
    let asked;
    const figuresAsked = new Promise((r) => { asked = r; });
    // The hub's figures are held until the form is in use, and say $40.00 remains (the list
    // says $50.00), so their arrival shows in the form.
    await admin.route((u) => /\/v1\/payments\/[^/]+$/.test(u.pathname), async (route) => {
      asked();
      await held;
      const response = await route.fetch();
      await route.fulfill({ response, json: { ...(await response.json()), refundable: 4000 } });
    });
    await row.getByRole('button', { name: 'Refund' }).click();
    await figuresAsked;
    const form = admin.locator('tr.refund');
    await form.getByLabel('Amount to refund').fill('20.00');
    // The button is pressed, the figures land, then it is released: the click must still
    // happen, which it does not if the form left the page meanwhile, even for a moment.
    await form.getByRole('button', { name: 'Refund now' }).hover();
    await admin.mouse.down();
    release();
    await admin.waitForFunction(() => document.querySelector('tr.refund input[data-role=refund-amount]')?.title.includes('40.00'));
    assert.equal(await form.getByLabel('Amount to refund').inputValue(), '20.00', 'what was typed is kept');
    await admin.mouse.up();
    await admin.getByText('$20.00 refunded.').waitFor();
  });
});

test('an open refund form follows a language switch and keeps what was typed', async () => {
  // The form is built once per opening; a switch of language builds it again in the new one.
  await inCall(b, async ({ info, doc, pat }) => {
    await paid(doc, pat, '50.00', 'Consultation');
    const { admin, row } = await paymentsTab(info, 'Consultation');
    await row.getByRole('button', { name: 'Refund' }).click();
    const form = admin.locator('tr.refund');
    await form.getByLabel('Amount to refund').fill('12.00');
    await admin.locator('#lang').selectOption('bn');
    assert.equal(await form.getByLabel('ফেরতের পরিমাণ').inputValue(), '12.00');
    await form.getByRole('button', { name: 'বন্ধ করুন' }).waitFor();
    assert.equal(await form.getByText('Amount to refund').count(), 0, 'no English label left');
  });
});

test('refunds and reports in Bengali, with no stray English', async () => {
  await inCall(b, async ({ info, doc, pat }) => {
    await paid(doc, pat, '50.00', 'Consultation');
    const { admin, row } = await paymentsTab(info, 'Consultation', { lang: 'bn-BD', tab: 'পেমেন্টসমূহ' });
    await row.getByRole('button', { name: 'ফেরত দিন' }).click();
    const form = admin.locator('tr.refund');
    await form.getByLabel('ফেরতের পরিমাণ').fill('৯০');
    await form.getByRole('button', { name: 'এখনই ফেরত দিন' }).click();
    await form.getByText('এই পেমেন্টে যা ফেরত দেওয়া বাকি, এটি তার চেয়ে বেশি।').waitFor();
    await form.getByLabel('ফেরতের পরিমাণ').fill('১০');
    await form.getByRole('button', { name: 'এখনই ফেরত দিন' }).click();
    await row.getByText('আংশিক ফেরত').waitFor();
    const noEnglish = (text, data) => {
      let rest = text;
      for (const d of data) rest = rest.split(d).join(' ');
      rest = rest.replace(/\b(acct|pi|pay|evt|re)_\w+/g, ' ');
      return [...new Set(rest.match(/[A-Za-z]{2,}/g) || [])].filter((w) => !['Stripe', 'callpay', 'English', 'CSV'].includes(w));
    };
    await row.getByRole('button', { name: 'ফেরত দিন' }).click();
    const data = ['Harbour Clinic', 'Cam (clinic admin)', 'Dr Ada Lee', 'Consultation', 'Visa'];
    assert.deepEqual(noEnglish(await admin.locator('#panel-payments').innerText(), data), []);
    await admin.getByRole('tab', { name: 'প্রতিবেদন' }).click();
    await admin.getByRole('button', { name: 'প্রতিবেদন দেখুন' }).click();
    await admin.locator('[data-total=net]').getByText('৪০').waitFor();
    const zones = await admin.locator('#r-tz').evaluate((s) => [...s.options].map((o) => o.textContent));
    const panel = await admin.locator('#panel-reports').innerText();
    assert.deepEqual(noEnglish(panel, [...data, ...zones]), [], panel);
    const chart = await admin.locator('#r-chart svg').getAttribute('aria-label');
    assert.match(chart, /প্রতিদিনের নিট/);
    await shot(admin, 'bn-5-refund-report');
  });
});
