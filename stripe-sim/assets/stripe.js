/*
 * stripe-sim's stand-in for Stripe.js v3. It offers the calls callpay's web app makes against the
 * real Stripe.js, with the same shapes:
 *   Stripe(pk, {stripeAccount}) -> stripe
 *   stripe.elements({clientSecret}) -> elements; elements.create('payment').mount(el)
 *   stripe.confirmPayment({elements, confirmParams: {receipt_email, return_url}, redirect})
 *     -> Promise<{paymentIntent} | {error}>
 *   stripe.retrievePaymentIntent(clientSecret) -> Promise<{paymentIntent} | {error}>
 * Card details go from this script straight to the simulator's API, never to the page's server.
 */
(function () {
  'use strict';
  var script = document.currentScript;
  var API = script ? new URL(script.src).origin : location.origin;

  function form(params) {
    var body = new URLSearchParams();
    Object.keys(params).forEach(function (k) {
      if (params[k] !== undefined && params[k] !== null && params[k] !== '') body.set(k, String(params[k]));
    });
    return body;
  }

  function call(method, path, params) {
    var url = API + path;
    var init = { method: method };
    if (method === 'GET') {
      url += '?' + form(params).toString();
    } else {
      init.body = form(params);
    }
    return fetch(url, init).then(function (r) {
      return r.json().then(function (body) { return { ok: r.ok, body: body }; });
    }, function () {
      return { ok: false, body: { error: { type: 'api_connection_error', message: 'Could not reach Stripe. Check your connection and try again.' } } };
    });
  }

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text) e.textContent = text;
    return e;
  }

  // Each mounted element gets its own ids, so two open pay forms never share a label target.
  var mounted = 0;

  // Field labels and the test-mode hint by `locale` (as Stripe's Elements take it); English for
  // any other locale.
  var TEXTS = {
    en: ['Card number', 'Expiry (MM / YY)', 'Security code (CVC)', 'Test mode: use 4242 4242 4242 4242, any future date, any CVC.'],
    bn: ['কার্ড নম্বর', 'মেয়াদ (মাস / বছর)', 'নিরাপত্তা কোড (CVC)', 'পরীক্ষামূলক মোড: ৪২৪২ ৪২৪২ ৪২৪২ ৪২৪২, ভবিষ্যতের যেকোনো তারিখ ও যেকোনো CVC ব্যবহার করুন।']
  };
  function texts(locale) { return TEXTS[String(locale || 'en').slice(0, 2)] || TEXTS.en; }

  function PaymentElement(locale) {
    this.root = null;
    this.handlers = {};
    this.locale = locale;
  }
  PaymentElement.prototype.mount = function (target) {
    var host = typeof target === 'string' ? document.querySelector(target) : target;
    if (!host) throw new Error('stripe-sim: mount target not found');
    var root = el('div', { 'class': 'stripe-sim-payment-element', 'data-stripe-sim': 'payment' });
    var fields = [
      ['card-number', 'Card number', 'cc-number', '1234 1234 1234 1234', 'numeric'],
      ['card-expiry', 'Expiry (MM / YY)', 'cc-exp', 'MM / YY', 'numeric'],
      ['card-cvc', 'Security code (CVC)', 'cc-csc', 'CVC', 'numeric']
    ];
    var self = this;
    mounted += 1;
    var n = mounted;
    fields.forEach(function (f) {
      var id = 'stripe-sim-' + f[0] + '-' + n;
      var label = el('label', { 'for': id, 'data-field': f[0], style: 'display:block;margin:.5rem 0 .2rem' }, f[1]);
      var input = el('input', { id: id, name: f[0], autocomplete: f[2], placeholder: f[3], inputmode: f[4], style: 'font-size:1rem;padding:.4rem;width:100%;box-sizing:border-box' });
      input.addEventListener('input', function () { self.emit('change', { elementType: 'payment', complete: self.complete() }); });
      root.appendChild(label);
      root.appendChild(input);
    });
    root.appendChild(el('p', { 'data-hint': '', style: 'font-size:.8rem;color:#555' }, ''));
    host.appendChild(root);
    this.root = root;
    this.relabel();
    this.emit('ready', { elementType: 'payment' });
    return this;
  };
  PaymentElement.prototype.relabel = function () {
    if (!this.root) return;
    var words = texts(this.locale);
    var labels = this.root.querySelectorAll('label[data-field]');
    for (var i = 0; i < labels.length; i++) labels[i].textContent = words[i];
    this.root.querySelector('[data-hint]').textContent = words[3];
  };
  PaymentElement.prototype.unmount = function () { if (this.root) { this.root.remove(); this.root = null; } };
  PaymentElement.prototype.destroy = PaymentElement.prototype.unmount;
  PaymentElement.prototype.on = function (name, cb) { (this.handlers[name] = this.handlers[name] || []).push(cb); return this; };
  PaymentElement.prototype.emit = function (name, ev) { (this.handlers[name] || []).forEach(function (cb) { cb(ev); }); };
  PaymentElement.prototype.value = function (name) {
    var input = this.root && this.root.querySelector('[name="' + name + '"]');
    return input ? input.value.replace(/\s+/g, '') : '';
  };
  PaymentElement.prototype.complete = function () { return !this.check(); };
  PaymentElement.prototype.check = function () {
    var number = this.value('card-number');
    var exp = this.value('card-expiry').split('/');
    var cvc = this.value('card-cvc');
    if (!/^\d{12,19}$/.test(number)) return { type: 'validation_error', code: 'incomplete_number', message: 'Your card number is incomplete.' };
    if (exp.length !== 2 || !/^\d{1,2}$/.test(exp[0]) || !/^\d{2,4}$/.test(exp[1])) return { type: 'validation_error', code: 'incomplete_expiry', message: "Your card's expiration date is incomplete." };
    if (!/^\d{3,4}$/.test(cvc)) return { type: 'validation_error', code: 'incomplete_cvc', message: "Your card's security code is incomplete." };
    return null;
  };

  function Elements(stripe, options) {
    this.stripe = stripe;
    this.clientSecret = (options || {}).clientSecret;
    this.locale = (options || {}).locale;
    this.elements = {};
  }
  /** Like Stripe's `elements.update({locale})`: relabels mounted elements. */
  Elements.prototype.update = function (options) {
    if (options && options.locale) this.locale = options.locale;
    var pe = this.elements.payment;
    if (pe) { pe.locale = this.locale; pe.relabel(); }
  };
  Elements.prototype.create = function (type) {
    if (type !== 'payment' && type !== 'card') throw new Error('stripe-sim supports the payment element only');
    this.elements.payment = new PaymentElement(this.locale);
    return this.elements.payment;
  };
  Elements.prototype.getElement = function (type) { return this.elements[type === 'card' ? 'payment' : type] || null; };
  Elements.prototype.submit = function () {
    var pe = this.elements.payment;
    var err = pe ? pe.check() : { type: 'validation_error', message: 'No payment element is mounted.' };
    return Promise.resolve(err ? { error: err } : {});
  };

  function challenge(url, locale) {
    var bn = String(locale || '').slice(0, 2) === 'bn';
    url += (url.indexOf('?') < 0 ? '?' : '&') + 'locale=' + encodeURIComponent(locale || 'en');
    return new Promise(function (resolve) {
      var overlay = el('div', { id: 'stripe-sim-3ds', role: 'dialog', 'aria-modal': 'true', 'aria-label': bn ? 'আপনার পেমেন্ট যাচাই করুন' : 'Authenticate your payment',
        style: 'position:fixed;inset:0;background:rgba(0,0,0,.5);display:flex;align-items:center;justify-content:center;z-index:2147483647' });
      var frame = el('iframe', { src: url, title: bn ? '৩-ডি সিকিউর যাচাই' : '3-D Secure authentication', name: 'stripe-sim-3ds-frame',
        style: 'width:min(28rem,95vw);height:min(26rem,90vh);border:0;background:#fff;border-radius:8px' });
      overlay.appendChild(frame);
      function onMessage(ev) {
        if (!ev.data || !ev.data.stripeSim3ds) return;
        window.removeEventListener('message', onMessage);
        overlay.remove();
        resolve(ev.data.stripeSim3ds);
      }
      window.addEventListener('message', onMessage);
      document.body.appendChild(overlay);
    });
  }

  function Stripe(key, options) {
    if (!(this instanceof Stripe)) return new Stripe(key, options);
    if (!key || key.indexOf('pk_') !== 0) throw new Error('stripe-sim: a publishable key (pk_...) is required');
    this.key = key;
    this.account = (options || {}).stripeAccount;
    this.locale = (options || {}).locale;
  }
  Stripe.prototype.params = function (extra) {
    var p = { key: this.key, _stripe_account: this.account };
    Object.keys(extra).forEach(function (k) { p[k] = extra[k]; });
    return p;
  };
  Stripe.prototype.elements = function (options) { return new Elements(this, options); };
  Stripe.prototype.retrievePaymentIntent = function (clientSecret) {
    var id = String(clientSecret).split('_secret_')[0];
    return call('GET', '/v1/payment_intents/' + encodeURIComponent(id), this.params({ client_secret: clientSecret })).then(function (r) {
      return r.ok ? { paymentIntent: r.body } : { error: r.body.error };
    });
  };
  Stripe.prototype.confirmPayment = function (opts) {
    var self = this;
    var elements = opts.elements;
    var confirm = opts.confirmParams || {};
    var clientSecret = opts.clientSecret || (elements && elements.clientSecret);
    var pe = elements && elements.getElement('payment');
    if (!clientSecret || !pe) return Promise.resolve({ error: { type: 'invalid_request_error', message: 'confirmPayment needs elements created with a clientSecret and a mounted payment element.' } });
    var invalid = pe.check();
    if (invalid) return Promise.resolve({ error: invalid });
    var id = clientSecret.split('_secret_')[0];
    var exp = pe.value('card-expiry').split('/');
    return call('POST', '/v1/payment_methods', self.params({
      type: 'card', 'card[number]': pe.value('card-number'), 'card[exp_month]': exp[0], 'card[exp_year]': exp[1],
      'card[cvc]': pe.value('card-cvc'), 'billing_details[email]': confirm.receipt_email
    })).then(function (pm) {
      if (!pm.ok) return { error: pm.body.error };
      return call('POST', '/v1/payment_intents/' + encodeURIComponent(id) + '/confirm', self.params({
        client_secret: clientSecret, payment_method: pm.body.id, receipt_email: confirm.receipt_email, return_url: confirm.return_url
      })).then(function (r) {
        if (!r.ok) return { error: r.body.error };
        var pi = r.body;
        if (pi.status !== 'requires_action' || !pi.next_action || !pi.next_action.redirect_to_url) return { paymentIntent: pi };
        return challenge(pi.next_action.redirect_to_url.url, self.locale).then(function () {
          return self.retrievePaymentIntent(clientSecret);
        }).then(function (res) {
          if (res.error) return res;
          var after = res.paymentIntent;
          if (after.status === 'succeeded' || after.status === 'processing') return { paymentIntent: after };
          var e = after.last_payment_error || { type: 'card_error', message: 'Authentication failed.' };
          var copy = {};
          Object.keys(e).forEach(function (k) { copy[k] = e[k]; });
          copy.payment_intent = after;
          return { error: copy };
        });
      });
    }).then(function (result) {
      var ok = result.paymentIntent && (result.paymentIntent.status === 'succeeded' || result.paymentIntent.status === 'processing');
      if (ok && opts.redirect !== 'if_required' && confirm.return_url) {
        var u = new URL(confirm.return_url, location.href);
        u.searchParams.set('payment_intent', result.paymentIntent.id);
        u.searchParams.set('payment_intent_client_secret', clientSecret);
        u.searchParams.set('redirect_status', 'succeeded');
        location.href = u.toString();
      }
      return result;
    });
  };

  window.Stripe = Stripe;
})();
