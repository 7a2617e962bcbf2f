// callpay browser SDK: connects a clinician or patient to a call's payment room, keeps the
// call's payments (highest version wins), reconnects with backoff and resyncs from the
// `welcome` snapshot, and exposes the three client actions. No dependencies.

const BACKOFF_START_MS = 500;
const BACKOFF_MAX_MS = 10000;
/** Spread of the reconnects after a node says it is stopping (4012) without saying over how long. */
const RESTART_JITTER_MS = 100;
/** Bounds on the waits a hub asks for. */
const MIN_WAIT_MS = 100;
const MAX_WAIT_MS = 60000;
/** The widest spread around the retry time a shed join (4013) is given. */
const RETRY_JITTER_MS = 1000;

/**
 * How long to wait before reconnecting after a close, in ms, and whether it counts as a failed
 * attempt (which lengthens the next backoff).
 * - 4012 (the node is stopping): at a random moment within the spread its reason gives
 *   (`reconnect within N ms`), so a drained node's clients reach the others paced.
 * - 4013 (the hub is admitting as many joins as it can): at the time its reason gives
 *   (`retry in N ms`), give or take half a second at most, with the ticket it gives (see
 *   `ticketOf`). The time is this client's place in
 *   the line of joins the hub turned away, which it paces at the rate it admits; a jitter in
 *   proportion to it (half to one and a half times, before) spread a 10 s place over 5-15 s,
 *   and the drain's last clients came back at 15 s. Not a failed attempt: the hub said when to
 *   come back. Counted as one, a connection refused after three or four sheds backed off 4-8 s
 *   (the slowest clients of a drain behind nginx).
 * - anything else: exponential backoff with jitter.
 */
export function reconnectDelay(code, reason, attempt, random = Math.random) {
  // What a hub says is bounded here: never less than a tenth of a second (no tight loop on a
  // "0 ms"), never more than a minute in all.
  const said = (re) => {
    const m = re.exec(reason || '');
    return m ? Math.min(MAX_WAIT_MS, Math.max(MIN_WAIT_MS, Number(m[1]))) : null;
  };
  const backoff = Math.min(BACKOFF_MAX_MS, BACKOFF_START_MS * 2 ** attempt) * (0.5 + random() / 2);
  if (code === 4012) {
    // A node that keeps sending this one away (attempts made since the last welcome) is not
    // the drain it claims: back off as after any other close.
    if (attempt > 0) return { wait: backoff, failed: true };
    return { wait: random() * (said(/within (\d+) ms/) ?? RESTART_JITTER_MS), failed: true };
  }
  if (code === 4013) {
    return { wait: retryDelay(said(/retry in (\d+) ms/) ?? BACKOFF_START_MS, random), failed: false };
  }
  return { wait: backoff, failed: true };
}

/**
 * When to come back to a place the hub gave (a shed join's `retry in N ms`, a `busy` command's
 * `retry_after_ms`), in ms: at that time give or take half a second (half of it, if shorter),
 * never less than a tenth of a second nor more than a minute. A missing or nonsensical figure
 * counts as half a second.
 */
export function retryDelay(retryMs, random = Math.random) {
  const n = Number(retryMs);
  const retry = Number.isFinite(n) ? Math.min(MAX_WAIT_MS, Math.max(MIN_WAIT_MS, n)) : BACKOFF_START_MS;
  return Math.min(MAX_WAIT_MS, retry + (random() - 0.5) * Math.min(retry, RETRY_JITTER_MS));
}

/**
 * The ticket a shed join (4013) is given for its place in the hub's line (`ticket T` in the
 * reason), or null. Sent back on the next attempt, it puts the join ahead of joins that have not
 * waited, on whichever node it reaches; without it, a join shed twice went to the end of the line
 * the second time.
 */
export function ticketOf(code, reason) {
  if (code !== 4013) return null;
  const m = /ticket ([0-9]+\.[0-9a-f]+)/.exec(reason || '');
  return m ? m[1] : null;
}

export class CallpayClient {
  /**
   * @param {object} opts
   * @param {string} opts.hubUrl   e.g. "https://pay.example.com"
   * @param {string} opts.callId
   * @param {string} opts.token    the join token the platform issued
   * @param {(event: string, detail: object) => void} opts.on  called for every event (see README)
   */
  constructor({ hubUrl, callId, token, on }) {
    this.hubUrl = hubUrl.replace(/\/$/, '');
    this.callId = callId;
    this.token = token;
    this.on = on || (() => {});
    this.payments = new Map();
    // Payments this page has seen unpaid, and those it has shown the "payment received" notice
    // for: the notice comes once per payment, however the page learns it was paid.
    this.sawUnpaid = new Set();
    this.notified = new Set();
    this.participants = [];
    this.you = null;
    this.clinicName = '';
    this.paymentsAvailable = false;
    this.ws = null;
    this.closedByUser = false;
    this.attempt = 0;
    this.timer = null;
    /** The ticket the last shed join was given; kept until a `welcome` (see `ticketOf`). */
    this.ticket = null;
    /** Requests the hub has not acknowledged yet, by client_ref: re-sent after every welcome. */
    this.pending = new Map();
    /** Timers sending a request again that the hub turned away as `busy`, by client_ref. */
    this.retries = new Map();
    /** Whether the current connection has had its `welcome` (which sends every pending request). */
    this.welcomed = false;
  }

  /** Opens the connection (and keeps it open until close()). */
  connect() {
    this.closedByUser = false;
    const base = `${this.hubUrl.replace(/^http/, 'ws')}/v1/calls/${encodeURIComponent(this.callId)}/ws`;
    const url = this.ticket ? `${base}?ticket=${encodeURIComponent(this.ticket)}` : base;
    this.on('status', { state: this.attempt ? 'reconnecting' : 'connecting' });
    // The token travels as a subprotocol (a header), never in the URL where proxies log it.
    const ws = new WebSocket(url, ['callpay.v1', `callpay.bearer.${this.token}`]);
    this.ws = ws;
    this.welcomed = false;
    ws.onmessage = (ev) => this.handle(JSON.parse(ev.data));
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.closedByUser) return;
      // 4010: a newer connection of the same participant (another tab) took this one's place;
      // reconnecting would only push that one out in turn.
      if (ev.code === 4010) {
        this.on('status', { state: 'replaced', code: ev.code });
        return;
      }
      this.on('status', { state: 'reconnecting', code: ev.code });
      const { wait, failed } = reconnectDelay(ev.code, ev.reason, this.attempt);
      // A new shed replaces the ticket (or drops it: an older hub gives none); any other close
      // keeps it, as the join is still in line (a refused connection, a balancer's 502).
      if (ev.code === 4013) this.ticket = ticketOf(ev.code, ev.reason);
      if (failed) this.attempt += 1;
      this.timer = setTimeout(() => this.connect(), wait);
    };
  }

  /** Closes for good. */
  close() {
    this.closedByUser = true;
    this.ticket = null;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000);
  }

  send(msg) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(msg));
    return true;
  }

  /**
   * Clinician: request a payment. Returns the client_ref. The request is kept until the hub
   * answers it (`payment.requested`, or an `error` naming the ref): sent now if connected, and
   * again after every reconnect, which the client_ref makes safe (the hub never makes two).
   */
  request({ amount, currency = 'aud', description, clientRef }) {
    const ref = clientRef || `req-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
    const msg = { type: 'payment.request', client_ref: ref, amount, currency, description };
    this.pending.set(ref, msg);
    // Sent now: a retry waiting after `busy` would only send it twice.
    clearTimeout(this.retries.get(ref));
    this.retries.delete(ref);
    this.send(msg);
    return ref;
  }

  /** Whether a request is still waiting for the hub. */
  isPending(clientRef) {
    return this.pending.has(clientRef);
  }

  /**
   * Forgets a pending request once the hub has answered it. A payment that answers this page's
   * own request counts as seen unpaid, whatever its status now: the page asked for it, so when
   * it was paid before the answer arrived (the socket dropped in between) the clinician still
   * gets the "payment received" notice.
   */
  settle(clientRef, outcome) {
    if (!clientRef || !this.pending.delete(clientRef)) return;
    clearTimeout(this.retries.get(clientRef));
    this.retries.delete(clientRef);
    if (outcome.payment) this.sawUnpaid.add(outcome.payment.payment_id);
    this.on('request', { client_ref: clientRef, ...outcome });
  }

  /** Clinician: cancel an unpaid request. */
  cancel(paymentId) {
    return this.send({ type: 'payment.cancel', payment_id: paymentId });
  }

  /** Patient: report progress ('viewing', 'entering_details', 'submitting', 'authenticating', 'submitted'). */
  progress(paymentId, stage) {
    return this.send({ type: 'payment.progress', payment_id: paymentId, stage });
  }

  /** Keeps the newer copy of a payment; returns true if `p` was new information. */
  keep(p) {
    if (!['succeeded', 'partially_refunded', 'refunded'].includes(p.status)) this.sawUnpaid.add(p.payment_id);
    const old = this.payments.get(p.payment_id);
    if (old && old.version > p.version) return false;
    this.payments.set(p.payment_id, p);
    return !old || old.version < p.version || old.status !== p.status;
  }

  /** Whether `p` shows paid a payment this page saw unpaid (checked before keeping it). */
  becamePaid(p) {
    return p.status === 'succeeded' && this.sawUnpaid.has(p.payment_id);
  }

  /** The "payment received" notice, once per payment for the life of the page. */
  notify(p) {
    if (this.notified.has(p.payment_id)) return;
    this.notified.add(p.payment_id);
    this.on('confirmed', p);
  }

  handle(frame) {
    switch (frame.type) {
      case 'welcome': {
        this.welcomed = true;
        this.attempt = 0;
        this.ticket = null;
        this.you = frame.you;
        this.clinicName = frame.clinic_name;
        this.participants = frame.participants;
        this.paymentsAvailable = frame.payments_available;
        this.payments = new Map();
        for (const p of frame.payments) this.keep(p);
        this.on('status', { state: 'live' });
        this.on('welcome', frame);
        // Requests the hub already has are done; the rest go (again) now, those waiting to
        // retry after `busy` included (a new connection may reach a node with room).
        for (const p of this.payments.values()) this.settle(p.client_ref, { payment: p });
        for (const timer of this.retries.values()) clearTimeout(timer);
        this.retries.clear();
        for (const msg of this.pending.values()) this.send(msg);
        // The patient's last stage per waiting payment, as if the progress frames were replayed.
        for (const [paymentId, stage] of Object.entries(frame.progress || {})) {
          this.on('progress', { type: 'payment.progress', payment_id: paymentId, stage });
        }
        // A payment that became paid while we were away still deserves its notice (also one
        // whose payment.updated arrived but whose payment.confirmed was cut off with the
        // connection).
        for (const p of this.payments.values()) {
          if (p.status === 'succeeded' && this.sawUnpaid.has(p.payment_id)) this.notify(p);
        }
        break;
      }
      case 'payment.requested':
      case 'payment.updated': {
        this.settle(frame.payment.client_ref, { payment: frame.payment });
        const paidNow = this.becamePaid(frame.payment);
        if (this.keep(frame.payment)) this.on('payment', frame.payment);
        // Normally a payment.confirmed follows at once; if the connection drops in between,
        // the notice must not be lost with it (notify ignores the repeat).
        if (paidNow) this.notify(frame.payment);
        break;
      }
      case 'payment.sync': {
        // A repair with many changes in one frame: each payment as a payment.updated, and the
        // notice of a payment.confirmed for each that became paid meanwhile.
        const confirmed = new Set(frame.confirmed || []);
        for (const p of frame.payments) {
          this.settle(p.client_ref, { payment: p });
          const paidNow = this.becamePaid(p);
          if (this.keep(p)) this.on('payment', p);
          if (paidNow || (confirmed.has(p.payment_id) && this.sawUnpaid.has(p.payment_id))) this.notify(this.payments.get(p.payment_id));
        }
        break;
      }
      case 'payment.confirmed':
        this.settle(frame.payment.client_ref, { payment: frame.payment });
        this.keep(frame.payment);
        this.on('payment', frame.payment);
        this.notify(frame.payment);
        break;
      case 'payment.progress':
        this.on('progress', frame);
        break;
      case 'participant.joined':
        if (!this.participants.some((p) => p.id === frame.participant.id)) this.participants.push(frame.participant);
        this.on('participants', this.participants);
        break;
      case 'participant.left':
        this.participants = this.participants.filter((p) => p.id !== frame.participant.id);
        this.on('participants', this.participants);
        break;
      case 'clinic.updated':
        this.paymentsAvailable = frame.payments_available;
        this.on('clinic', frame);
        break;
      case 'error':
        // Turned away untouched by a hub at capacity: not an answer. The request stays pending
        // and goes again at the time the hub gave, under the same client_ref, which makes a
        // repeat harmless; the page learns when.
        // (Before its welcome, a new connection sends nothing: the welcome sends it.)
        if (frame.code === 'busy' && this.pending.has(frame.ref)) {
          const ref = frame.ref;
          const wait = retryDelay(frame.retry_after_ms);
          clearTimeout(this.retries.get(ref));
          this.retries.set(ref, setTimeout(() => {
            this.retries.delete(ref);
            const msg = this.pending.get(ref);
            if (msg && this.welcomed) this.send(msg);
          }, wait));
          this.on('busy', { client_ref: ref, wait });
          break;
        }
        // A `busy` for a request already answered (a copy sent again from a welcome, turned
        // away after the first went through) says nothing new; one for a payment (a cancel)
        // is shown.
        if (frame.code === 'busy' && !this.payments.has(frame.ref)) break;
        // A refused request has its answer: the page shows why and the person decides.
        this.settle(frame.ref, { error: frame });
        this.on('error', frame);
        break;
      default:
        break;
    }
  }
}

/** Reads `#token=…&call=…` (the fragment keeps tokens out of server logs) and `?call=`. */
export function launchParams() {
  const hash = new URLSearchParams(location.hash.slice(1));
  const query = new URLSearchParams(location.search);
  return { token: hash.get('token') || '', callId: hash.get('call') || query.get('call') || '', clinic: query.get('clinic') || hash.get('clinic') || '' };
}
