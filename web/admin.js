// Configure > Client Payment: the clinic's Stripe link (Go To Stripe, edit, remove with a
// confirm step), the payment app's enablement (org admins ask, the service desk decides),
// callpay's own receipt e-mails (the clinic's admins turn them on or off), the clinic's audit log, and (a second tab) its payment records with their history. The hub enforces every permission; this page only hides what the
// signed-in role cannot use.
import { launchParams } from '/web/sdk/callpay.js';
import { t, applyI18n, languageSwitch, when, money, brand, decline, asciiDigits, lang } from '/web/i18n.js';

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
  if (!r.ok) {
    const e = new Error(json.message || `${r.status}`);
    e.code = json.code;
    throw e;
  }
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
  renderReceipts(canManage);
}

/** callpay's own receipt e-mails as the hub has them: the status for everyone who sees the
 * page, the switch for the clinic's admins. Turning them on needs a mail server on the hub
 * (`receipts_available`); turning them off never does, so that stays possible. */
function renderReceipts(canManage) {
  const on = Boolean(view.own_receipts);
  $('receipts-status').textContent = t(on ? 'admin.receipts.on' : 'admin.receipts.off');
  $('receipts-control').hidden = !canManage;
  $('own-receipts').checked = on;
  $('own-receipts').disabled = !on && !view.receipts_available;
  $('receipts-unavailable').hidden = Boolean(view.receipts_available);
}

/** Turns them on or off through the API, then shows the clinic as the hub has it now (so a
 * refusal puts the switch back). */
async function setReceipts(enabled) {
  $('own-receipts').disabled = true;
  try {
    await api('PUT', `/v1/clinics/${encodeURIComponent(clinic)}/receipts`, { enabled });
    say(t(enabled ? 'admin.receipts.saved.on' : 'admin.receipts.saved.off'));
  } catch (e) {
    say(e.code === 'receipts_unavailable' ? t('admin.receipts.unavailable') : t('admin.error', { message: e.message }), true);
  }
  await load();
}

/** An audit record as a sentence in the page's language: the catalogue words each action, and
 * an outcome that changes its meaning (a refused link, a failed removal) has its own sentence.
 * An action the catalogue does not know yet gets a general sentence, never the raw code. */
function auditSentence(row) {
  const vars = { who: row.actor_name, target: row.target || '' };
  for (const key of [`audit.${row.action}.${row.outcome}`, `audit.${row.action}`]) {
    const sentence = t(key, vars);
    if (sentence !== key) return sentence;
  }
  return t('audit.other', vars);
}

/** The "who" cell: the actor's name and, unless the name already says it, their role. Platform
 * tokens often carry the role in the display name ("Cam (clinic admin)"), and Stripe is both. */
function whoText(row) {
  const role = t(`role.${row.actor_role}`);
  const known = role !== `role.${row.actor_role}`;
  if (!known || /\)\s*$/.test(row.actor_name) || row.actor_name === role) return row.actor_name;
  return `${row.actor_name} (${role})`;
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

/** The last audit page loaded, kept so a language switch redraws it in the new language. */
let auditRows = [];

async function loadAudit() {
  try {
    const log = await api('GET', `/v1/clinics/${encodeURIComponent(clinic)}/audit?limit=50`);
    auditRows = log.data;
  } catch (_) { auditRows = []; /* roles without audit access simply see an empty table */ }
  renderAudit();
}

function renderAudit() {
  const body = $('audit');
  body.innerHTML = '';
  for (const row of auditRows) {
    const tr = document.createElement('tr');
    const cell = (text) => {
      const td = document.createElement('td');
      td.textContent = text;
      return td;
    };
    tr.append(cell(when(row.at)), cell(whoText(row)), whatCell(row), cell(t(`audit.outcome.${row.outcome}`)));
    body.append(tr);
  }
}

/** The pending requests last loaded, kept so a language switch redraws them. */
let pendingRequests = [];

async function loadRequests() {
  const list = await api('GET', '/v1/enablement-requests?status=pending');
  pendingRequests = list.data;
  renderRequests();
}

function renderRequests() {
  const ul = $('requests');
  ul.innerHTML = '';
  for (const r of pendingRequests) {
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

// ---- Payments tab -------------------------------------------------------------------------

/** Roles that may read payment records (a clinician only their own; the hub decides). */
const canSeePayments = ['org_admin', 'team_admin', 'team_member'].includes(role);
/** Statuses offered as a filter. */
const STATUSES = ['requested', 'authenticating', 'processing', 'succeeded', 'failed', 'canceled', 'partially_refunded', 'refunded'];
/** The payments shown, the cursor of the next page, the clinicians seen, the open histories. */
const payments = { rows: [], next: null, clinicians: new Map(), histories: new Map(), refunding: new Map(), clinics: [] };
/** An organisation's admin may list every clinic of it at once, or pick one. */
const orgWide = role === 'org_admin';
/** Roles that may refund (a clinician only their own, within the clinic's window; the hub decides). */
const canRefund = ['team_admin', 'team_member'].includes(role);
const REASONS = ['requested_by_customer', 'duplicate', 'fraudulent'];

/** Major units as typed ("20", "20.5", "A$20.50") to cents; null if it is not an amount. */
function cents(text) {
  const m = /^\s*(?:A?\$\s*)?(\d{1,7})(?:[.,](\d{1,2}))?\s*$/.exec(asciiDigits(text));
  return m ? Number(m[1]) * 100 + Number((m[2] || '').padEnd(2, '0')) : null;
}

/**
 * Keys of refunds the hub kept unfinished (Stripe was unreachable), by payment: a form opened
 * again for that payment sends the same key until a final answer, so asking again finishes
 * the kept refund instead of making a second one.
 */
const keptKeys = new Map();

/**
 * Opens or closes a payment's refund form. A form's key is the kept refund's, or new: a second
 * click sends the same key, and the hub answers with the same refund instead of making another.
 * What the form offers is what remains by the hub's count (kept refunds included), read when it
 * opens.
 */
async function toggleRefund(p) {
  if (payments.refunding.has(p.id)) {
    payments.refunding.delete(p.id);
    renderPayments();
    return;
  }
  const state = { key: keptKeys.get(p.id) || crypto.randomUUID(), error: '', sending: false, amount: '', reason: REASONS[0], note: '', left: null };
  payments.refunding.set(p.id, state);
  renderPayments();
  try {
    const record = await api('GET', `/v1/payments/${encodeURIComponent(p.id)}`);
    state.left = record.refundable;
  } catch (_) {
    // The list's own figures stand in.
  }
  if (payments.refunding.get(p.id) === state) redrawRefund(p.id, state);
}

/**
 * Updates an open refund form where it stands, with the payment as the list now has it. The
 * rest of the list is left alone: a redraw takes the form out of the page for a moment, and
 * a button pressed then never gets its click (the refund would not be sent), while a field
 * being typed in loses its focus.
 */
function redrawRefund(paymentId, state) {
  const current = payments.rows.find((r) => r.id === paymentId);
  if (!current || !state.view?.tr.isConnected) {
    renderPayments();
    return;
  }
  refundRow(current, state);
}

/**
 * A payment's refund form. It is built once per opening (and language) and kept in `state`; its
 * own changes (the hub's figures arriving, sending, an error) update it where it stands
 * ([`redrawRefund`]), and a redraw of the whole list moves the same elements. A form built afresh
 * at each redraw lost a click landing at that moment, and the refund was never sent.
 */
function refundRow(p, state) {
  // Built again only in another language (its labels and choices are written once).
  if (state.view?.lang !== lang) {
    state.view = buildRefundRow(p, state);
    state.view.lang = lang;
    if (state.edited) state.view.amount.value = state.amount;
  }
  const { tr, amount, submit, error } = state.view;
  const left = state.left ?? (p.amount_received ?? p.amount) - p.amount_refunded;
  // What is typed is kept as it is typed; until then the form offers all that remains.
  if (!state.edited) amount.value = (left / 100).toFixed(2);
  amount.title = t('refund.amount.help', { amount: money(left, p.currency) });
  submit.textContent = state.sending ? t('refund.sending') : t('refund.submit');
  submit.disabled = state.sending;
  // Closing while a refund is on its way would let a new form send a second one under a new key.
  state.view.close.disabled = state.sending;
  error.textContent = state.error;
  return tr;
}

/** The elements of a refund form (see [`refundRow`]), wired to `state`. */
function buildRefundRow(p, state) {
  const tr = document.createElement('tr');
  tr.className = 'refund';
  tr.dataset.refundOf = p.id;
  const td = document.createElement('td');
  td.colSpan = 7;
  const form = document.createElement('form');
  form.className = 'filters';
  form.setAttribute('aria-label', t('refund.title'));
  const field = (id, label, input) => {
    const div = document.createElement('div');
    const l = document.createElement('label');
    l.htmlFor = id;
    l.textContent = label;
    input.id = id;
    div.append(l, input);
    form.append(div);
    return input;
  };
  const amount = field(`refund-amount-${p.id}`, t('refund.amount'), document.createElement('input'));
  amount.inputMode = 'decimal';
  amount.dataset.role = 'refund-amount';
  const reason = field(`refund-reason-${p.id}`, t('refund.reason'), document.createElement('select'));
  reason.dataset.role = 'refund-reason';
  for (const r of REASONS) {
    const opt = document.createElement('option');
    opt.value = r;
    opt.textContent = t(`refund.reason.${r}`);
    reason.append(opt);
  }
  reason.value = state.reason;
  const note = field(`refund-note-${p.id}`, t('refund.note'), document.createElement('input'));
  note.maxLength = 200;
  note.value = state.note;
  amount.addEventListener('input', () => { state.amount = amount.value; state.edited = true; });
  reason.addEventListener('change', () => { state.reason = reason.value; });
  note.addEventListener('input', () => { state.note = note.value; });
  const row = document.createElement('p');
  row.className = 'row';
  const submit = document.createElement('button');
  submit.type = 'submit';
  submit.dataset.role = 'refund-submit';
  const close = document.createElement('button');
  close.type = 'button';
  close.className = 'secondary';
  close.textContent = t('refund.close');
  close.addEventListener('click', () => toggleRefund(p));
  const error = document.createElement('span');
  error.className = 'error';
  error.setAttribute('role', 'alert');
  row.append(submit, close, error);
  form.append(row);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (state.sending) return;
    state.amount = amount.value;
    state.reason = reason.value;
    state.note = note.value;
    const value = cents(amount.value);
    if (!value) {
      state.error = t('refund.error.invalid_amount');
      redrawRefund(p.id, state);
      return;
    }
    state.sending = true;
    state.error = '';
    redrawRefund(p.id, state);
    try {
      const r = await api('POST', `/v1/payments/${encodeURIComponent(p.id)}/refunds`, {
        amount: value, reason: state.reason, note: state.note || undefined, request_key: state.key,
      });
      payments.refunding.delete(p.id);
      keptKeys.delete(p.id);
      say(t('refund.done', { amount: money(r.refund.amount, r.refund.currency) }));
      await loadPayments(false);
      return;
    } catch (e) {
      const key = `refund.error.${e.code}`;
      state.error = t(key) === key ? t('refund.error.other') : t(key);
      // Only an unfinished refund is sent again under its key (by any form opened for this
      // payment); after a final answer the next request is a new one.
      if (['stripe_unavailable', 'unavailable'].includes(e.code)) keptKeys.set(p.id, state.key);
      else {
        keptKeys.delete(p.id);
        state.key = crypto.randomUUID();
      }
    }
    state.sending = false;
    redrawRefund(p.id, state);
  });
  td.append(form);
  tr.append(td);
  return { tr, amount, submit, close, error };
}

function statusLabel(p) {
  return p.status === 'failed' ? t('payments.status.failed') : t(`status.${p.status}`);
}

/** Midnight at the start of a `yyyy-mm-dd` day in the browser's time zone, in Unix ms. */
function dayStart(value, plusDays = 0) {
  const [y, m, d] = value.split('-').map(Number);
  return new Date(y, m - 1, d + plusDays).getTime();
}

/** The list's query string from the filter form: dates as Unix ms (the "to" day included). */
function paymentQuery(cursor) {
  const q = new URLSearchParams({ limit: '25' });
  if ($('f-from').value) q.set('from', String(dayStart($('f-from').value)));
  if ($('f-to').value) q.set('to', String(dayStart($('f-to').value, 1)));
  if ($('f-status').value) q.set('status', $('f-status').value);
  if ($('f-clinician').value) q.set('clinician', $('f-clinician').value);
  if ($('f-call').value.trim()) q.set('call_id', $('f-call').value.trim());
  if (cursor) q.set('cursor', cursor);
  return q.toString();
}

/**
 * Where the list comes from: this clinic's records, or (an organisation's admin choosing "every
 * clinic" or another clinic) the organisation's, narrowed by `clinic=` when one is picked.
 */
function paymentsPath(cursor) {
  const q = paymentQuery(cursor);
  const picked = $('f-clinic').value;
  if (!orgWide || !view || !picked || picked === clinic) return `/v1/clinics/${encodeURIComponent(clinic)}/payments?${q}`;
  const narrow = picked === '*' ? '' : `&clinic=${encodeURIComponent(picked)}`;
  return `/v1/orgs/${encodeURIComponent(view.org_id)}/payments?${q}${narrow}`;
}

/** The organisation's clinics, for the clinic picker (once). */
async function loadClinics() {
  if (!orgWide || !view || payments.clinics.length) return;
  try {
    const r = await api('GET', `/v1/orgs/${encodeURIComponent(view.org_id)}/clinics?limit=500`);
    payments.clinics = r.data.map((c) => [c.id, c.name || c.id]);
  } catch (e) {
    say(t('admin.error', { message: e.message }), true);
  }
}

async function loadPayments(more) {
  await loadClinics();
  try {
    const r = await api('GET', paymentsPath(more ? payments.next : null));
    payments.rows = more ? payments.rows.concat(r.data) : r.data;
    payments.next = r.next_cursor;
    if (!more) payments.histories.clear();
    for (const p of r.data) payments.clinicians.set(p.requested_by_id, p.requested_by_name);
  } catch (e) {
    say(t('admin.error', { message: e.message }), true);
  }
  renderPayments();
}

/** The filter form's choices, in the page's language; what was chosen stays chosen. */
function renderFilters() {
  const fill = (select, options) => {
    const keep = select.value;
    select.innerHTML = '';
    for (const [value, label] of options) {
      const opt = document.createElement('option');
      opt.value = value;
      opt.textContent = label;
      select.append(opt);
    }
    select.value = keep;
  };
  fill($('f-status'), [['', t('payments.status.all')], ...STATUSES.map((s) => [s, statusLabel({ status: s })])]);
  fill($('f-clinician'), [['', t('payments.clinician.all')], ...payments.clinicians]);
  $('f-clinic-field').hidden = !orgWide;
  if (orgWide) {
    const others = payments.clinics.filter(([id]) => id !== clinic);
    fill($('f-clinic'), [[clinic, t('payments.clinic.this')], ['*', t('payments.clinic.all')], ...others]);
    if (!$('f-clinic').value) $('f-clinic').value = clinic;
  }
}

function renderPayments() {
  renderFilters();
  const body = $('payments');
  body.innerHTML = '';
  for (const p of payments.rows) {
    const tr = document.createElement('tr');
    tr.dataset.paymentId = p.id;
    const cell = (text) => {
      const td = document.createElement('td');
      td.textContent = text;
      tr.append(td);
      return td;
    };
    cell(when(p.created_at));
    const by = cell(p.requested_by_name);
    // In a list of several clinics, each row says whose it is.
    if (p.clinic_id !== clinic) {
      const where = document.createElement('small');
      where.dataset.role = 'clinic';
      where.textContent = p.clinic_name || p.clinic_id;
      by.append(document.createElement('br'), where);
    }
    cell(p.description);
    const amount = cell(money(p.amount, p.currency));
    if (p.amount_refunded > 0) amount.append(document.createElement('br'), t('payments.refunded', { amount: money(p.amount_refunded, p.currency) }));
    const status = cell(statusLabel(p));
    status.dataset.status = p.status;
    if (p.status === 'failed') status.title = decline({ code: p.failure_code, decline_code: p.failure_decline_code });
    cell(p.card_last4 ? t('payments.card.line', { brand: brand(p.card_brand), last4: p.card_last4 }) : '—');
    const links = cell('');
    if (p.dashboard_url) {
      const a = document.createElement('a');
      a.href = p.dashboard_url;
      a.target = '_blank';
      a.rel = 'noopener';
      a.textContent = t('payments.open');
      links.append(a, document.createElement('br'));
    }
    const toggle = document.createElement('button');
    toggle.type = 'button';
    toggle.className = 'secondary';
    toggle.dataset.role = 'history';
    toggle.textContent = t('payments.history');
    toggle.setAttribute('aria-expanded', String(payments.histories.has(p.id)));
    toggle.addEventListener('click', () => toggleHistory(p.id));
    links.append(toggle);
    if (canRefund && ['succeeded', 'partially_refunded'].includes(p.status)) {
      const refund = document.createElement('button');
      refund.type = 'button';
      refund.className = 'secondary';
      refund.dataset.role = 'refund';
      refund.textContent = t('refund.button');
      refund.setAttribute('aria-expanded', String(payments.refunding.has(p.id)));
      refund.addEventListener('click', () => toggleRefund(p));
      links.append(document.createElement('br'), refund);
    }
    body.append(tr);
    if (payments.refunding.has(p.id)) body.append(refundRow(p, payments.refunding.get(p.id)));
    if (payments.histories.has(p.id)) body.append(historyRow(p.id, payments.histories.get(p.id)));
  }
  $('payments-none').hidden = payments.rows.length > 0;
  $('payments-more').hidden = !payments.next;
}

/** Where a change came from, in the page's language. */
function sourceText(s) {
  switch (s.kind) {
    case 'webhook': return t('payments.source.webhook', { event: s.event_id });
    case 'stripe_read': return t('payments.source.stripe_read');
    case 'hub': return t('payments.source.hub');
    default: return t('payments.source.admin', { who: s.actor_name || '' });
  }
}

function historyRow(id, record) {
  const tr = document.createElement('tr');
  tr.className = 'history';
  tr.dataset.historyOf = id;
  const td = document.createElement('td');
  td.colSpan = 7;
  const ol = document.createElement('ol');
  for (const h of record.history) {
    const li = document.createElement('li');
    const who = h.source.actor_name || t(`role.${h.source.kind === 'hub' ? 'clinician' : 'stripe'}`);
    const what = auditSentence({ action: h.action, outcome: h.outcome, actor_name: who, target: '' });
    li.textContent = t('payments.history.line', { when: when(h.at), what, source: sourceText(h.source) });
    ol.append(li);
  }
  td.append(ol);
  tr.append(td);
  return tr;
}

async function toggleHistory(id) {
  if (payments.histories.has(id)) {
    payments.histories.delete(id);
  } else {
    try {
      payments.histories.set(id, await api('GET', `/v1/payments/${encodeURIComponent(id)}`));
    } catch (e) {
      say(t('admin.error', { message: e.message }), true);
    }
  }
  renderPayments();
}

/** Shows one tab's panel; the payments load the first time their tab opens. */
function showTab(name) {
  for (const tab of ['settings', 'payments', 'reports']) {
    const on = tab === name;
    $(`tab-${tab}`).setAttribute('aria-selected', String(on));
    $(`tab-${tab}`).tabIndex = on ? 0 : -1;
    $(`tab-${tab}`).className = on ? '' : 'secondary';
    $(`panel-${tab}`).hidden = !on;
  }
  if (name === 'payments' && !payments.loaded) {
    payments.loaded = true;
    loadPayments(false);
  }
}

// ---- Reports tab --------------------------------------------------------------------------

/** Roles that may read reports: the clinic's admins and the organisation's. */
const canSeeReports = ['org_admin', 'team_admin'].includes(role);
const report = { data: null };

function isoDay(d) {
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, '0')}-${String(d.getDate()).padStart(2, '0')}`;
}

function reportPath(format) {
  const q = new URLSearchParams({ from: $('r-from').value, to: $('r-to').value, tz: $('r-tz').value, format });
  // Sums are of one currency; the picker appears once a period holds more than one.
  if (!$('r-currency-field').hidden && $('r-currency').value) q.set('currency', $('r-currency').value);
  const scope = $('r-scope').value === 'org' && view ? `/v1/orgs/${encodeURIComponent(view.org_id)}` : `/v1/clinics/${encodeURIComponent(clinic)}`;
  return `${scope}/report?${q}`;
}

function fillReportForm() {
  const here = Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
  const zones = [...new Set([here, 'Australia/Sydney', 'Australia/Perth', 'Asia/Dhaka', 'UTC'])];
  const keep = $('r-tz').value;
  $('r-tz').innerHTML = '';
  for (const z of zones) {
    const opt = document.createElement('option');
    opt.value = opt.textContent = z;
    $('r-tz').append(opt);
  }
  $('r-tz').value = keep || here;
  const scope = $('r-scope').value || 'clinic';
  $('r-scope').innerHTML = '';
  for (const s of role === 'org_admin' ? ['clinic', 'org'] : ['clinic']) {
    const opt = document.createElement('option');
    opt.value = s;
    opt.textContent = t(`reports.scope.${s}`);
    $('r-scope').append(opt);
  }
  $('r-scope').value = scope;
  if (!$('r-from').value) {
    const now = new Date();
    $('r-from').value = isoDay(new Date(now.getFullYear(), now.getMonth(), 1));
    $('r-to').value = isoDay(now);
  }
}

async function loadReport() {
  try {
    report.data = await api('GET', reportPath('json'));
  } catch (e) {
    say(t('admin.error', { message: e.message }), true);
  }
  renderReport();
}

/** The by-day chart: one bar per day of net taken, drawn as SVG on the page. */
function chart(r) {
  const ns = 'http://www.w3.org/2000/svg';
  const days = r.by_day;
  const w = Math.max(320, days.length * 24);
  const h = 160;
  const top = Math.max(1, ...days.map((d) => d.net));
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', `0 0 ${w} ${h + 30}`);
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', t('reports.chart', { from: r.from, to: r.to }));
  const slot = w / days.length;
  days.forEach((d, i) => {
    const bar = document.createElementNS(ns, 'rect');
    const bh = Math.round((Math.max(0, d.net) / top) * h);
    bar.setAttribute('x', String(i * slot + slot * 0.15));
    bar.setAttribute('y', String(h - bh));
    bar.setAttribute('width', String(slot * 0.7));
    bar.setAttribute('height', String(bh));
    bar.dataset.date = d.date;
    bar.dataset.net = String(d.net);
    const title = document.createElementNS(ns, 'title');
    title.textContent = `${dayLabel(d.date)}: ${money(d.net, r.currency || 'aud')}`;
    bar.append(title);
    svg.append(bar);
    if (days.length <= 16 || i % Math.ceil(days.length / 16) === 0) {
      const label = document.createElementNS(ns, 'text');
      label.setAttribute('x', String(i * slot + slot / 2));
      label.setAttribute('y', String(h + 14));
      label.setAttribute('text-anchor', 'middle');
      label.textContent = dayLabel(d.date, true);
      svg.append(label);
    }
  });
  return svg;
}

/** A report day (`yyyy-mm-dd`) in the page's language. */
function dayLabel(date, short) {
  const [y, m, d] = date.split('-').map(Number);
  const opts = short ? { day: 'numeric', month: 'short', timeZone: 'UTC' } : { dateStyle: 'medium', timeZone: 'UTC' };
  return new Intl.DateTimeFormat(lang === 'bn' ? 'bn-BD' : 'en-AU', opts).format(Date.UTC(y, m - 1, d));
}

function renderReport() {
  fillReportForm();
  const r = report.data;
  $('report').hidden = !r || r.totals.count === 0;
  $('report-none').hidden = !r || r.totals.count > 0;
  if (!r) return;
  const cur = r.currency || 'aud';
  const several = (r.currencies || []).length > 1;
  $('r-currency-field').hidden = !several;
  if (several) {
    $('r-currency').innerHTML = '';
    for (const c of r.currencies) {
      const opt = document.createElement('option');
      opt.value = c.currency;
      opt.textContent = c.currency.toUpperCase();
      $('r-currency').append(opt);
    }
    $('r-currency').value = cur;
  }
  const dl = $('r-totals');
  dl.innerHTML = '';
  for (const k of ['count', 'paid_count', 'gross', 'refunded', 'refund_count', 'net', 'average']) {
    const dt = document.createElement('dt');
    dt.textContent = t(`reports.${k}`);
    const dd = document.createElement('dd');
    dd.dataset.total = k;
    const v = r.totals[k];
    dd.textContent = k.endsWith('count') ? new Intl.NumberFormat(lang === 'bn' ? 'bn-BD' : 'en-AU').format(v) : money(v, cur);
    dl.append(dt, dd);
  }
  $('r-chart').innerHTML = '';
  $('r-chart').append(chart(r));
  const rows = (tbody, items, cells) => {
    $(tbody).innerHTML = '';
    for (const item of items) {
      const tr = document.createElement('tr');
      for (const c of cells(item)) {
        const td = document.createElement('td');
        td.textContent = c;
        tr.append(td);
      }
      $(tbody).append(tr);
    }
  };
  const count = (n) => new Intl.NumberFormat(lang === 'bn' ? 'bn-BD' : 'en-AU').format(n);
  rows('r-clinicians', r.by_clinician, (c) => [c.name, count(c.count), money(c.gross, cur), money(c.refunded, cur), money(c.net, cur)]);
  rows('r-statuses', Object.entries(r.by_status), ([s, v]) => [t(`status.${s}`), count(v.count)]);
}

/** The CSV export: fetched with the admin token, then handed to the browser as a file. */
async function downloadCsv() {
  try {
    const r = await fetch(reportPath('csv'), { headers: { authorization: `Bearer ${token}` } });
    if (!r.ok) throw new Error((await r.json().catch(() => ({}))).message || `${r.status}`);
    const blob = await r.blob();
    const name = /filename="([^"]+)"/.exec(r.headers.get('content-disposition') || '')?.[1] || 'callpay-report.csv';
    const a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = name;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
  } catch (e) {
    say(t('admin.error', { message: e.message }), true);
  }
}

$('tab-reports').hidden = !canSeeReports;
$('tab-reports').addEventListener('click', () => { showTab('reports'); renderReport(); });
$('report-form').addEventListener('submit', (ev) => { ev.preventDefault(); loadReport(); });
$('r-csv').addEventListener('click', downloadCsv);

$('tab-payments').hidden = !canSeePayments;
$('tab-settings').addEventListener('click', () => showTab('settings'));
$('tab-payments').addEventListener('click', () => showTab('payments'));
$('tabs').addEventListener('keydown', (ev) => {
  if (ev.key !== 'ArrowRight' && ev.key !== 'ArrowLeft') return;
  const tabs = ['settings', ...(canSeePayments ? ['payments'] : []), ...(canSeeReports ? ['reports'] : [])];
  const at = tabs.findIndex((tab) => $(`tab-${tab}`).getAttribute('aria-selected') === 'true');
  const next = tabs[(at + (ev.key === 'ArrowRight' ? 1 : tabs.length - 1)) % tabs.length];
  showTab(next);
  $(`tab-${next}`).focus();
});
$('payment-filters').addEventListener('submit', (ev) => { ev.preventDefault(); loadPayments(false); });
$('payment-filters').addEventListener('reset', () => setTimeout(() => loadPayments(false)));
$('payments-more').addEventListener('click', () => loadPayments(true));
renderFilters();

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

$('own-receipts').addEventListener('change', () => setReceipts($('own-receipts').checked));
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

// A language switch redraws everything the page wrote itself, dates included.
languageSwitch($('lang'), () => { render(); renderAudit(); renderRequests(); renderPayments(); renderReport(); });
applyI18n();
load();
