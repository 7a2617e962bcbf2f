// callpay's own receipt e-mails on Configure › Client Payment: the clinic admin turns them off
// and on again with the page's switch, in English and in Bengali, and the hub's API (not the
// page) is asked each time whether the change landed; the audit log words each change.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { browser, page, shot, withDemo } from './harness.mjs';

let b;
before(async () => { b = await browser(); });
after(async () => { await b.close(); });

/** The clinic as the hub's API has it, read with the clinic admin's token. */
async function clinicNow(info) {
  const r = await fetch(`${info.hub_url}/v1/clinics/${info.clinic_id}`, {
    headers: { authorization: `Bearer ${info.clinic_admin_token}` },
  });
  assert.equal(r.status, 200);
  return r.json();
}

test("a clinic admin turns callpay's own receipts off and on from the page, in English and Bengali", async () => {
  await withDemo(async (info) => {
    const before = await clinicNow(info);
    assert.deepEqual([before.own_receipts, before.receipts_available], [true, true], 'the demo clinic starts with them on');
    const admin = await page(b);
    await admin.goto(`${info.hub_url}/admin/client-payment?clinic=${info.clinic_id}#token=${info.clinic_admin_token}`);
    const section = admin.locator('section', { has: admin.getByRole('heading', { name: 'Receipt e-mails' }) });
    const toggle = section.getByRole('checkbox', { name: "Send callpay's own receipt e-mail to patients" });
    await toggle.waitFor();
    assert.equal(await toggle.isChecked(), true);
    assert.match(await section.textContent(), /callpay e-mails the patient its own receipt/);

    // Off, in English.
    await toggle.uncheck();
    await admin.getByText("callpay's own receipts are off.").waitFor();
    assert.equal((await clinicNow(info)).own_receipts, false, 'the hub has them off');
    await section.getByText('Only Stripe e-mails receipts').waitFor();
    assert.equal(await toggle.isChecked(), false);
    await admin.locator('#audit').getByText("Cam (clinic admin) turned off callpay's own receipt e-mails.").waitFor();
    await shot(admin, 'receipts-1-off');

    // On again, in Bengali.
    await admin.locator('#lang').selectOption('bn');
    const bnSection = admin.locator('section', { has: admin.getByRole('heading', { name: 'রসিদের ইমেইল' }) });
    const bnToggle = bnSection.getByRole('checkbox', { name: 'রোগীদের callpay-এর নিজের রসিদ ইমেইল করুন' });
    await bnSection.getByText('শুধু Stripe রসিদ ইমেইল করে').waitFor();
    await bnToggle.check();
    await admin.getByText('callpay-এর নিজের রসিদ চালু হয়েছে।').waitFor();
    assert.equal((await clinicNow(info)).own_receipts, true, 'the hub has them on');
    await bnSection.getByText('প্রতিটি পেমেন্টের পর callpay রোগীকে নিজের রসিদ ইমেইল করে').waitFor();
    await admin.locator('#audit').getByText('callpay-এর নিজের রসিদ ইমেইল চালু করেছেন।').waitFor();
    const latin = (await bnSection.innerText()).match(/[A-Za-z]{2,}/g).filter((w) => !['callpay', 'Stripe'].includes(w));
    assert.deepEqual(latin, [], 'the section speaks Bengali');
    await shot(admin, 'receipts-2-on-bn');

    // A fresh page shows what the hub has, not what the last page did.
    await admin.reload();
    await bnToggle.waitFor();
    assert.equal(await bnToggle.isChecked(), true);

    // The service desk sees whether they are on, but the choice is the clinic's: no switch.
    const desk = await page(b);
    await desk.goto(`${info.hub_url}/admin/client-payment?clinic=${info.clinic_id}#token=${info.operator_token}`);
    await desk.getByText('callpay e-mails the patient its own receipt').waitFor();
    assert.equal(await desk.getByRole('checkbox').count(), 0, 'no switch for the desk');
  });
});
