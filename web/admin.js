// Configure > Client Payment: the clinic's Stripe link (Go To Stripe, edit, remove with a
// confirm step), the payment app's enablement (org admins ask, the service desk decides), and
// the clinic's audit log. The hub enforces every permission; this page only hides what the
// signed-in role cannot use.
import { launchParams } from '/web/sdk/callpay.js';
import { t, applyI18n, languageSwitch, when } from '/web/i18n.js';

const $ = (id) => document.getElementById(id);
const launch = launchParams();
const clinic = launch.clinic;
// The admin token arrives in the URL fragment; keep it for this tab so the page still works
// when Stripe's OAuth round trip brings the browser back without it.
const token = (() => {
  try {
    if (launch.token) sessionStorage.setItem('callpay.admin_token', launch.token);
    return launch.token || sessionStorage.getItem('callpay.admin_token') || '';
  } catch (_) { return launch.token; }
})();
const role = (() => {
  try { return JSON.parse(atob(token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/'))).role; } catch (_) { return ''; }
})();
let view = null;

async function api(method, path, body) {
  const r = await fetch(path, {
    method,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: body ? JSON.stringify(body) : undefined,
  });
  const json = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(json.message || `${r.status}`);
  return json;
}

function say(text, isError) {
  $('message').textContent = text;
  $('message').className = isError ? 'error' : 'ok';
}

async function load() {
  try {
    view = await api('GET', `/v1/clinics/${encodeURIComponent(clinic)}`);
  } catch (e) {
    say(t('admin.error', { message: e.message }), true);
    return;
  }
  render();
  loadAudit();
  if (role === 'platform_operator') loadRequests();
}

function render() {
  if (!view) return;
  const s = view.stripe;
  $('stripe-status').textContent = s.linked
    ? t('admin.linked', { account: s.account, name: s.display_name || s.account, mode: t(s.livemode ? 'admin.mode.live' : 'admin.mode.test'), by: s.linked_by || '—', when: s.linked_at ? when(s.linked_at) : '—' })
    : t('admin.notlinked');
  $('stripe-status').dataset.linked = String(s.linked);
  const canManage = role === 'team_admin' || role === 'org_admin';
  $('goto').hidden = !canManage || s.linked || !view.app_enabled;
  $('edit').hidden = !canManage || !s.linked;
  $('remove').hidden = !canManage || !s.linked;
  const e = view.enablement;
  let app = view.app_enabled ? t('admin.app.enabled') : t('admin.app.disabled');
  if (!view.app_enabled && e && e.status === 'pending') app += ` ${t('admin.app.pending', { id: e.id, ticket: e.ticket_ref })}`;
  if (!view.app_enabled && e && e.status === 'rejected') app += ` ${t('admin.app.rejected', { reason: e.reason || '' })}`;
  $('app-status').textContent = app;
  // Org admins and the clinic's own admins may ask for the app.
  $('request-form').hidden = !((role === 'org_admin' || role === 'team_admin') && !view.app_enabled && !(e && e.status === 'pending'));
  $('clinic-name').textContent = t('admin.clinic', { name: view.name });
  $('operator').hidden = role !== 'platform_operator';
}

/** An audit record as a sentence in the page's language; an action the catalogue does not know
 * yet is shown as its code and target. */
function auditSentence(row) {
  const key = `audit.${row.action}`;
  const sentence = t(key, { who: row.actor_name, target: row.target || '' });
  return sentence !== key ? sentence : `${row.action}${row.target ? ` ${row.target}` : ''}`;
}

/** The "what" cell: the sentence, and the record's detail as the hub wrote it (ids, amounts,
 * Stripe's own words), kept verbatim for the audit and folded away under "Details". */
function whatCell(row) {
  const td = document.createElement('td');
  td.append(auditSentence(row));
  if (row.detail) {
    const more = document.createElement('details');
    const summary = document.createElement('summary');
    summary.textContent = t('admin.audit.detail');
    const text = document.createElement('span');
    text.lang = 'en';
    text.textContent = row.detail;
    more.append(summary, text);
    td.append(more);
  }
  return td;
}

async function loadAudit() {
  try {
    const log = await api('GET', `/v1/clinics/${encodeURIComponent(clinic)}/audit?limit=50`);
    const body = $('audit');
    body.innerHTML = '';
    for (const row of log.data) {
      const tr = document.createElement('tr');
      const cell = (text) => {
        const td = document.createElement('td');
        td.textContent = text;
        return td;
      };
      tr.append(cell(when(row.at)), cell(`${row.actor_name} (${t(`role.${row.actor_role}`)})`), whatCell(row), cell(t(`audit.outcome.${row.outcome}`)));
      body.append(tr);
    }
  } catch (_) { /* roles without audit access simply see an empty table */ }
}

async function loadRequests() {
  const list = await api('GET', '/v1/enablement-requests?status=pending');
  const ul = $('requests');
  ul.innerHTML = '';
  for (const r of list.data) {
    const li = document.createElement('li');
    li.className = 'card';
    li.dataset.requestId = r.id;
    const p = document.createElement('p');
    p.textContent = t('admin.request.line', { clinic: r.clinic_name || r.clinic_id, org: r.org_id, who: r.requested_by_name || r.requested_by, when: when(r.created_at), ticket: r.ticket_ref });
    const approve = document.createElement('button');
    approve.textContent = t('admin.approve');
    approve.dataset.role = 'approve';
    approve.addEventListener('click', async () => { await act(() => api('POST', `/v1/enablement-requests/${r.id}/approve`)); });
    const reason = document.createElement('input');
    reason.setAttribute('aria-label', t('admin.reason'));
    reason.placeholder = t('admin.reason');
    const reject = document.createElement('button');
    reject.className = 'secondary';
    reject.textContent = t('admin.reject');
    reject.addEventListener('click', async () => { await act(() => api('POST', `/v1/enablement-requests/${r.id}/reject`, { reason: reason.value })); });
    li.append(p, reason, document.createElement('br'), approve, reject);
    ul.append(li);
  }
}

async function act(fn, done) {
  try {
    await fn();
    if (done) say(done);
  } catch (e) {
    say(t('admin.error', { message: e.message }), true);
  }
  await load();
}

/** Edit: the linked account as Stripe has it now, its dashboard, and the way to link another. */
async function showAccount() {
  try {
    const r = await api('GET', `/v1/clinics/${encodeURIComponent(clinic)}/stripe/account`);
    const a = r.account;
    const yes = (v) => t(v ? 'admin.account.yes' : 'admin.account.no');
    const rows = [
      ['admin.account.id', a.id], ['admin.account.name', a.name || '—'], ['admin.account.email', a.email || '—'],
      ['admin.account.country', a.country || '—'], ['admin.account.charges', yes(a.charges_enabled)],
      ['admin.account.payouts', yes(a.payouts_enabled)],
    ];
    const dl = $('account-fields');
    dl.innerHTML = '';
    for (const [k, v] of rows) {
      const dt = document.createElement('dt');
      dt.textContent = t(k);
      const dd = document.createElement('dd');
      dd.textContent = v;
      dl.append(dt, dd);
    }
    $('dashboard').href = r.dashboard_url;
    $('account-details').hidden = false;
  } catch (e) {
    say(t('admin.error', { message: e.message }), true);
  }
}

async function gotoStripe() {
  try {
    const r = await api('POST', `/v1/clinics/${encodeURIComponent(clinic)}/stripe/connect`);
    location.href = r.authorize_url;
  } catch (e) {
    say(t('admin.error', { message: e.message }), true);
  }
}

$('goto').addEventListener('click', gotoStripe);
$('edit').addEventListener('click', showAccount);
$('relink').addEventListener('click', gotoStripe);
$('remove').addEventListener('click', () => $('confirm-remove').showModal());
$('confirm-remove').addEventListener('close', () => {
  if ($('confirm-remove').returnValue === 'remove') {
    act(() => api('DELETE', `/v1/clinics/${encodeURIComponent(clinic)}/stripe`), t('admin.removed'));
  }
});
$('request-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  act(() => api('POST', `/v1/orgs/${encodeURIComponent(view.org_id)}/enablement-requests`, { clinic_ids: [clinic], ticket_ref: $('ticket').value }));
});

languageSwitch($('lang'), render);
applyI18n();
load();
