// The one message catalogue for every callpay page: English and Bengali. Pages mark text with
// data-i18n="key" (content) or data-i18n-attr="attr:key"; scripts call t(key, vars).
const MESSAGES = {
  en: {
    'lang.name': 'English',
    'lang.switch': 'Language',
    'conn.connecting': 'Connecting…',
    'conn.live': 'Live',
    'conn.reconnecting': 'Reconnecting…',
    'conn.replaced': 'This call is open in another window; continue there.',
    'clinician.title': 'Request Payment',
    'clinician.amount': 'Amount (AUD)',
    'clinician.amount.help': 'Dollars and cents, for example 50.00',
    'clinician.description': 'Description',
    'clinician.description.help': 'Shown to the patient and on the receipt (no clinical details).',
    'clinician.submit': 'Request Payment',
    'clinician.sending': 'Sending…',
    'clinician.queued': 'Not connected. Your request is kept and will be sent as soon as the connection is back.',
    'clinician.list': 'Requests in this call',
    'clinician.none': 'No payment requests yet.',
    'clinician.cancel': 'Cancel request',
    'clinician.cancel.confirm': 'Cancel this request? The patient will no longer be able to pay it.',
    'clinician.cancel.yes': 'Yes, cancel it',
    'clinician.cancel.no': 'Keep it',
    'clinician.unavailable': 'Payments are not available for this clinic: {reason}',
    'clinician.popup.title': 'Payment received',
    'clinician.popup.body': '{amount} for "{description}" at {time}',
    'clinician.popup.close': 'Close',
    'validate.amount': 'Enter an amount like 50.00 (at least 0.50, at most {max}).',
    'validate.description': 'Enter a description of 1 to 200 characters.',
    'status.creating': 'Sending…',
    'status.requested': 'Requested',
    'status.paying': 'Patient is paying',
    'status.authenticating': 'Authenticating',
    'status.processing': 'Processing',
    'status.failed': 'Failed: {reason}',
    'status.succeeded': 'Paid',
    'status.canceled': 'Cancelled',
    'status.partially_refunded': 'Partly refunded',
    'status.refunded': 'Refunded',
    'patient.title': 'Payment',
    'patient.none': 'Nothing to pay right now.',
    'patient.from': 'Requested by {name}, {clinic}',
    'patient.paynow': 'Pay Now',
    'patient.email': 'Email for your receipt',
    'patient.card': 'Card details',
    'patient.pay': 'Pay {amount}',
    'patient.paying': 'Paying…',
    'patient.declined': 'Your payment did not go through: {reason} You can try again or use another card.',
    'error.forbidden': 'Your role cannot do that in this call.',
    'error.invalid_amount': 'Enter an amount the clinic accepts (at least 0.50).',
    'error.invalid_currency': 'That currency is not accepted here.',
    'error.invalid_description': 'Enter a description of 1 to 200 characters, without special control characters.',
    'error.invalid_client_ref': 'The request could not be identified; try again.',
    'error.app_not_enabled': 'The payment app is not enabled for this clinic.',
    'error.stripe_not_connected': 'This clinic has no linked Stripe account; a clinic admin can link one under Configure › Client Payment.',
    'error.stripe_unavailable': 'Stripe could not be reached; nothing was charged. Try again.',
    'error.unknown_payment': 'That payment is not part of this call.',
    'error.invalid_state': 'That payment can no longer be changed that way.',
    'error.rate_limited': 'Too many actions at once; wait a moment.',
    'error.bad_frame': 'The page sent something the hub did not understand; reload the page.',
    'error.internal': 'Something went wrong on our side; nothing was lost. Try again.',
    'decline.insufficient_funds': 'The card has insufficient funds.',
    'decline.expired_card': 'The card has expired.',
    'decline.incorrect_cvc': "The card's security code is incorrect.",
    'decline.incorrect_number': 'The card number is incorrect.',
    'decline.lost_card': 'The card was declined.',
    'decline.stolen_card': 'The card was declined.',
    'decline.card_velocity_exceeded': 'The card has reached its spending limit for now.',
    'decline.processing_error': 'The card could not be processed.',
    'decline.do_not_honor': 'The bank declined the card.',
    'decline.payment_intent_authentication_failure': 'The bank could not confirm it was you.',
    'decline.authentication_required': 'The bank asks you to confirm this payment.',
    'decline.card_declined': 'The card was declined.',
    'decline.generic_decline': 'The card was declined.',
    'decline.other': 'The payment could not be completed.',
    'reason.app_not_enabled': 'the payment app is not enabled for this clinic.',
    'reason.stripe_not_connected': 'the clinic has no linked Stripe account; a clinic admin can link one under Configure › Client Payment.',
    'title.clinician': 'Request Payment · callpay',
    'title.patient': 'Payment · callpay',
    'title.admin': 'Client Payment · callpay',
    'patient.email.invalid': 'Enter a valid email address for your receipt.',
    'patient.done.title': 'Payment complete',
    'patient.done.amount': 'Amount',
    'patient.done.description': 'For',
    'patient.done.date': 'Date',
    'patient.done.card': 'Card',
    'patient.done.receipt': 'Receipt sent to',
    'patient.done.reference': 'Reference',
    'patient.canceled': 'This request was cancelled by the clinic.',
    'patient.waiting': 'Confirming with your bank…',
    'admin.title': 'Configure › Client Payment',
    'admin.status': 'Stripe account',
    'admin.notlinked': 'Not linked. Link the clinic\'s Stripe account to take payments in calls.',
    'admin.linked': 'Linked to {account} ({name}), {mode}. Linked by {by} on {when}.',
    'admin.mode.test': 'test mode',
    'admin.mode.live': 'live mode',
    'admin.goto': 'Go To Stripe',
    'admin.edit': 'Edit',
    'admin.remove': 'Remove',
    'admin.remove.confirm': 'Remove the Stripe account? New payments cannot be requested until another account is linked. Payments already made stay in Stripe.',
    'admin.remove.yes': 'Remove account',
    'admin.remove.no': 'Keep it',
    'admin.removed': 'The Stripe account was removed.',
    'admin.app': 'Payment app',
    'admin.app.enabled': 'Enabled for this clinic.',
    'admin.app.disabled': 'Not enabled for this clinic.',
    'admin.app.pending': 'Request {id} (ticket {ticket}) is waiting for the service desk.',
    'admin.app.rejected': 'The last request was rejected: {reason}',
    'admin.request': 'Ask for the payment app',
    'admin.ticket': 'Service-desk ticket of the authorised telehealth manager',
    'admin.requests': 'Enablement requests',
    'admin.approve': 'Approve',
    'admin.reject': 'Reject',
    'admin.reason': 'Reason for rejecting',
    'admin.audit': 'Audit log',
    'admin.audit.when': 'When', 'admin.audit.who': 'Who', 'admin.audit.what': 'What', 'admin.audit.outcome': 'Outcome',
    'admin.error': 'That did not work: {message}',
    'admin.clinic': 'Clinic: {name}',
    'admin.audit.detail': 'Details',
    'admin.account.id': 'Account', 'admin.account.name': 'Name', 'admin.account.email': 'E-mail',
    'admin.account.country': 'Country', 'admin.account.charges': 'Can take payments', 'admin.account.payouts': 'Receives payouts',
    'admin.account.yes': 'Yes', 'admin.account.no': 'No',
    'admin.account.dashboard': 'Open the Stripe dashboard', 'admin.account.relink': 'Link another account',
    'admin.request.line': '{clinic} ({org}), asked by {who} on {when}, ticket {ticket}',
    'role.org_admin': 'organisation admin', 'role.team_admin': 'clinic admin', 'role.team_member': 'clinician',
    'role.platform_operator': 'service desk', 'role.stripe': 'Stripe', 'role.hub': 'callpay',
    'audit.outcome.ok': 'done', 'audit.outcome.refused': 'refused', 'audit.outcome.failed': 'failed',
    'audit.payment.requested': '{who} requested a payment.',
    'audit.payment.canceled': '{who} cancelled a payment request.',
    'audit.payment.authenticating': 'The bank asked the patient to confirm a payment.',
    'audit.payment.processing': 'The bank is processing a payment.',
    'audit.payment.succeeded': 'A payment was received.',
    'audit.payment.failed': 'A payment attempt failed.',
    'audit.payment.refunded': 'A payment was refunded.',
    'audit.payment.partially_refunded': 'Part of a payment was refunded.',
    'audit.payment.amount_mismatch': 'Refused: Stripe reported another amount than was requested.',
    'audit.payment.intent_mismatch': 'Refused: a payment on Stripe that callpay did not create claimed a request.',
    'audit.stripe.link_started': '{who} started linking a Stripe account.',
    'audit.stripe.linked': '{who} linked Stripe account {target}.',
    'audit.stripe.relinked': '{who} linked another Stripe account, {target}.',
    'audit.stripe.removed': '{who} removed Stripe account {target}.',
    'audit.stripe.deauthorized': 'Stripe account {target} revoked callpay\'s access.',
    'audit.app.disabled': '{who} turned the payment app off.',
    'audit.app.enable_requested': '{who} asked for the payment app.',
    'audit.app.enable_approved': '{who} approved the payment app.',
    'audit.app.enable_rejected': '{who} turned down the request for the payment app.',
    'audit.clinic.upserted': '{who} registered or renamed the clinic.',
    'audit.org.upserted': '{who} registered or renamed the organisation.',
    'audit.stripe.link': 'A Stripe link started by {who} did not go through; nothing changed.',
    'audit.stripe.link.refused': 'A Stripe link started by {who} was refused; nothing changed.',
    'audit.stripe.link.failed': 'A Stripe link started by {who} failed at Stripe; nothing changed.',
    'audit.stripe.removed.failed': '{who} tried to remove Stripe account {target}, but Stripe could not be reached; it is still linked.',
    'audit.payment.requested.refused': 'A payment request by {who} was refused.',
    'audit.payment.canceled.refused': 'A cancellation by {who} was refused.',
    'audit.payment.creating': '{who} started a payment request.',
    'audit.other': 'Something this page cannot describe yet happened; see the details.',
    'role.clinician': 'clinician', 'role.patient': 'patient',
    'admin.tabs': 'Client Payment sections',
    'admin.tab.settings': 'Stripe and payment app',
    'admin.tab.payments': 'Payments',
    'payments.filters': 'Filter payments',
    'payments.from': 'From', 'payments.to': 'To (inclusive)', 'payments.status': 'Status', 'payments.status.all': 'Any status',
    'payments.clinician': 'Clinician', 'payments.clinician.all': 'Any clinician', 'payments.call': 'Call',
    'payments.apply': 'Show', 'payments.clear': 'Clear filters',
    'payments.when': 'Requested', 'payments.who': 'By', 'payments.what': 'For', 'payments.amount': 'Amount',
    'payments.state': 'Status', 'payments.card': 'Card', 'payments.links': 'Stripe',
    'payments.status.failed': 'Failed',
    'payments.open': 'Open in Stripe',
    'payments.history': 'History',
    'payments.none': 'No payments match.',
    'payments.more': 'Show more',
    'payments.refunded': '{amount} refunded',
    'payments.card.line': '{brand} ending {last4}',
    'payments.source.hub': 'in the call',
    'payments.source.webhook': 'Stripe event {event}',
    'payments.source.stripe_read': 'read from Stripe',
    'payments.source.admin': 'by {who}',
    'payments.history.line': '{when}: {what} ({source})',
    'demo.title': 'callpay demo call',
    'demo.guide': 'Left: the clinician\'s panel. Right: the patient\'s. Request $50.00 on the left, pay on the right with 4242 4242 4242 4242 (any future date, any CVC). Try 4000 0025 0000 3155 for 3-D Secure and 4000 0000 0000 9995 for a decline.',
    'demo.admin': 'Clinic admin: Configure › Client Payment',
    'demo.dashboard': 'Stripe simulator dashboard',
  },
  bn: {
    'lang.name': 'বাংলা',
    'lang.switch': 'ভাষা',
    'conn.connecting': 'সংযোগ করা হচ্ছে…',
    'conn.live': 'সংযুক্ত',
    'conn.reconnecting': 'আবার সংযোগ করা হচ্ছে…',
    'conn.replaced': 'এই কলটি অন্য একটি উইন্ডোতে খোলা আছে; সেখানে চালিয়ে যান।',
    'clinician.title': 'পেমেন্টের অনুরোধ',
    'clinician.amount': 'পরিমাণ (AUD)',
    'clinician.amount.help': 'ডলার ও সেন্ট, যেমন 50.00',
    'clinician.description': 'বিবরণ',
    'clinician.description.help': 'রোগী ও রসিদে দেখানো হবে (কোনো চিকিৎসা-তথ্য নয়)।',
    'clinician.submit': 'পেমেন্টের অনুরোধ পাঠান',
    'clinician.sending': 'পাঠানো হচ্ছে…',
    'clinician.queued': 'সংযোগ নেই। আপনার অনুরোধটি রাখা আছে, সংযোগ ফিরে এলেই পাঠানো হবে।',
    'clinician.list': 'এই কলের অনুরোধসমূহ',
    'clinician.none': 'এখনও কোনো পেমেন্টের অনুরোধ নেই।',
    'clinician.cancel': 'অনুরোধ বাতিল করুন',
    'clinician.cancel.confirm': 'এই অনুরোধটি বাতিল করবেন? রোগী আর এটি পরিশোধ করতে পারবেন না।',
    'clinician.cancel.yes': 'হ্যাঁ, বাতিল করুন',
    'clinician.cancel.no': 'রেখে দিন',
    'clinician.unavailable': 'এই ক্লিনিকে পেমেন্ট নেওয়া যাচ্ছে না: {reason}',
    'clinician.popup.title': 'পেমেন্ট পাওয়া গেছে',
    'clinician.popup.body': '"{description}"-এর জন্য {amount}, {time}-এ',
    'clinician.popup.close': 'বন্ধ করুন',
    'validate.amount': '50.00-এর মতো পরিমাণ লিখুন (কমপক্ষে 0.50, সর্বোচ্চ {max})।',
    'validate.description': '১ থেকে ২০০ অক্ষরের একটি বিবরণ লিখুন।',
    'status.creating': 'পাঠানো হচ্ছে…',
    'status.requested': 'অনুরোধ পাঠানো হয়েছে',
    'status.paying': 'রোগী পেমেন্ট করছেন',
    'status.authenticating': 'যাচাই করা হচ্ছে',
    'status.processing': 'প্রক্রিয়াধীন',
    'status.failed': 'ব্যর্থ: {reason}',
    'status.succeeded': 'পরিশোধিত',
    'status.canceled': 'বাতিল',
    'status.partially_refunded': 'আংশিক ফেরত',
    'status.refunded': 'ফেরত দেওয়া হয়েছে',
    'patient.title': 'পেমেন্ট',
    'patient.none': 'এই মুহূর্তে পরিশোধের কিছু নেই।',
    'patient.from': '{name}, {clinic} অনুরোধ করেছেন',
    'patient.paynow': 'এখনই পরিশোধ করুন',
    'patient.email': 'রসিদের জন্য ইমেইল',
    'patient.card': 'কার্ডের তথ্য',
    'patient.pay': '{amount} পরিশোধ করুন',
    'patient.paying': 'পরিশোধ করা হচ্ছে…',
    'patient.declined': 'আপনার পেমেন্ট সম্পন্ন হয়নি: {reason} আবার চেষ্টা করুন বা অন্য কার্ড ব্যবহার করুন।',
    'error.forbidden': 'এই কলে আপনার ভূমিকায় এটি করা যায় না।',
    'error.invalid_amount': 'ক্লিনিক গ্রহণ করে এমন একটি পরিমাণ লিখুন (কমপক্ষে ০.৫০)।',
    'error.invalid_currency': 'এখানে এই মুদ্রা গ্রহণ করা হয় না।',
    'error.invalid_description': '১ থেকে ২০০ অক্ষরের একটি বিবরণ লিখুন, বিশেষ নিয়ন্ত্রণ অক্ষর ছাড়া।',
    'error.invalid_client_ref': 'অনুরোধটি শনাক্ত করা যায়নি; আবার চেষ্টা করুন।',
    'error.app_not_enabled': 'এই ক্লিনিকের জন্য পেমেন্ট অ্যাপ চালু করা হয়নি।',
    'error.stripe_not_connected': 'এই ক্লিনিকের কোনো Stripe অ্যাকাউন্ট যুক্ত নেই; একজন ক্লিনিক অ্যাডমিন কনফিগার › ক্লায়েন্ট পেমেন্ট থেকে যুক্ত করতে পারেন।',
    'error.stripe_unavailable': 'Stripe-এর সঙ্গে যোগাযোগ করা যায়নি; কোনো টাকা কাটা হয়নি। আবার চেষ্টা করুন।',
    'error.unknown_payment': 'এই পেমেন্টটি এই কলের অংশ নয়।',
    'error.invalid_state': 'এই পেমেন্টটি আর এভাবে বদলানো যায় না।',
    'error.rate_limited': 'একসঙ্গে অনেক কাজ হচ্ছে; একটু অপেক্ষা করুন।',
    'error.bad_frame': 'পাতাটি এমন কিছু পাঠিয়েছে যা হাব বুঝতে পারেনি; পাতাটি আবার লোড করুন।',
    'error.internal': 'আমাদের দিকে একটি সমস্যা হয়েছে; কিছুই হারায়নি। আবার চেষ্টা করুন।',
    'decline.insufficient_funds': 'কার্ডে পর্যাপ্ত টাকা নেই।',
    'decline.expired_card': 'কার্ডের মেয়াদ শেষ হয়ে গেছে।',
    'decline.incorrect_cvc': 'কার্ডের নিরাপত্তা কোডটি ভুল।',
    'decline.incorrect_number': 'কার্ড নম্বরটি ভুল।',
    'decline.lost_card': 'কার্ডটি গ্রহণ করা হয়নি।',
    'decline.stolen_card': 'কার্ডটি গ্রহণ করা হয়নি।',
    'decline.card_velocity_exceeded': 'কার্ডটি আপাতত খরচের সীমায় পৌঁছে গেছে।',
    'decline.processing_error': 'কার্ডটি প্রক্রিয়া করা যায়নি।',
    'decline.do_not_honor': 'ব্যাংক কার্ডটি গ্রহণ করেনি।',
    'decline.payment_intent_authentication_failure': 'ব্যাংক নিশ্চিত হতে পারেনি যে এটি আপনি।',
    'decline.authentication_required': 'ব্যাংক এই পেমেন্টটি নিশ্চিত করতে বলছে।',
    'decline.card_declined': 'কার্ডটি গ্রহণ করা হয়নি।',
    'decline.generic_decline': 'কার্ডটি গ্রহণ করা হয়নি।',
    'decline.other': 'পেমেন্টটি সম্পন্ন করা যায়নি।',
    'reason.app_not_enabled': 'এই ক্লিনিকের জন্য পেমেন্ট অ্যাপ চালু করা হয়নি।',
    'reason.stripe_not_connected': 'ক্লিনিকের কোনো Stripe অ্যাকাউন্ট যুক্ত নেই; একজন ক্লিনিক অ্যাডমিন কনফিগার › ক্লায়েন্ট পেমেন্ট থেকে যুক্ত করতে পারেন।',
    'title.clinician': 'পেমেন্টের অনুরোধ · callpay',
    'title.patient': 'পেমেন্ট · callpay',
    'title.admin': 'ক্লায়েন্ট পেমেন্ট · callpay',
    'patient.email.invalid': 'রসিদের জন্য একটি সঠিক ইমেইল ঠিকানা লিখুন।',
    'patient.done.title': 'পেমেন্ট সম্পন্ন হয়েছে',
    'patient.done.amount': 'পরিমাণ',
    'patient.done.description': 'কিসের জন্য',
    'patient.done.date': 'তারিখ',
    'patient.done.card': 'কার্ড',
    'patient.done.receipt': 'রসিদ পাঠানো হয়েছে',
    'patient.done.reference': 'রেফারেন্স',
    'patient.canceled': 'ক্লিনিক এই অনুরোধটি বাতিল করেছে।',
    'patient.waiting': 'আপনার ব্যাংকের সঙ্গে নিশ্চিত করা হচ্ছে…',
    'admin.title': 'কনফিগার › ক্লায়েন্ট পেমেন্ট',
    'admin.status': 'Stripe অ্যাকাউন্ট',
    'admin.notlinked': 'সংযুক্ত নয়। কলে পেমেন্ট নিতে ক্লিনিকের Stripe অ্যাকাউন্ট সংযুক্ত করুন।',
    'admin.linked': '{account} ({name})-এর সঙ্গে সংযুক্ত, {mode}। {when}-এ {by} সংযুক্ত করেছেন।',
    'admin.mode.test': 'টেস্ট মোড',
    'admin.mode.live': 'লাইভ মোড',
    'admin.goto': 'Stripe-এ যান',
    'admin.edit': 'সম্পাদনা',
    'admin.remove': 'সরান',
    'admin.remove.confirm': 'Stripe অ্যাকাউন্টটি সরাবেন? অন্য অ্যাকাউন্ট সংযুক্ত না হওয়া পর্যন্ত নতুন পেমেন্টের অনুরোধ করা যাবে না। আগের পেমেন্টগুলো Stripe-এ থেকে যাবে।',
    'admin.remove.yes': 'অ্যাকাউন্ট সরান',
    'admin.remove.no': 'রেখে দিন',
    'admin.removed': 'Stripe অ্যাকাউন্টটি সরানো হয়েছে।',
    'admin.app': 'পেমেন্ট অ্যাপ',
    'admin.app.enabled': 'এই ক্লিনিকের জন্য চালু।',
    'admin.app.disabled': 'এই ক্লিনিকের জন্য চালু নয়।',
    'admin.app.pending': 'অনুরোধ {id} (টিকিট {ticket}) সার্ভিস ডেস্কের অপেক্ষায়।',
    'admin.app.rejected': 'শেষ অনুরোধটি প্রত্যাখ্যাত হয়েছে: {reason}',
    'admin.request': 'পেমেন্ট অ্যাপের জন্য অনুরোধ করুন',
    'admin.ticket': 'অনুমোদিত টেলিহেলথ ম্যানেজারের সার্ভিস-ডেস্ক টিকিট',
    'admin.requests': 'চালু করার অনুরোধসমূহ',
    'admin.approve': 'অনুমোদন করুন',
    'admin.reject': 'প্রত্যাখ্যান করুন',
    'admin.reason': 'প্রত্যাখ্যানের কারণ',
    'admin.audit': 'অডিট লগ',
    'admin.audit.when': 'কখন', 'admin.audit.who': 'কে', 'admin.audit.what': 'কী', 'admin.audit.outcome': 'ফলাফল',
    'admin.error': 'কাজটি হয়নি: {message}',
    'admin.clinic': 'ক্লিনিক: {name}',
    'admin.audit.detail': 'বিস্তারিত',
    'admin.account.id': 'অ্যাকাউন্ট', 'admin.account.name': 'নাম', 'admin.account.email': 'ইমেইল',
    'admin.account.country': 'দেশ', 'admin.account.charges': 'পেমেন্ট নিতে পারে', 'admin.account.payouts': 'পেআউট পায়',
    'admin.account.yes': 'হ্যাঁ', 'admin.account.no': 'না',
    'admin.account.dashboard': 'Stripe ড্যাশবোর্ড খুলুন', 'admin.account.relink': 'অন্য অ্যাকাউন্ট যুক্ত করুন',
    'admin.request.line': '{clinic} ({org}), {who} {when}-এ অনুরোধ করেছেন, টিকিট {ticket}',
    'role.org_admin': 'সংস্থার অ্যাডমিন', 'role.team_admin': 'ক্লিনিক অ্যাডমিন', 'role.team_member': 'চিকিৎসক',
    'role.platform_operator': 'সার্ভিস ডেস্ক', 'role.stripe': 'Stripe', 'role.hub': 'callpay',
    'audit.outcome.ok': 'সম্পন্ন', 'audit.outcome.refused': 'প্রত্যাখ্যাত', 'audit.outcome.failed': 'ব্যর্থ',
    'audit.payment.requested': '{who} একটি পেমেন্টের অনুরোধ করেছেন।',
    'audit.payment.canceled': '{who} একটি পেমেন্টের অনুরোধ বাতিল করেছেন।',
    'audit.payment.authenticating': 'ব্যাংক রোগীকে একটি পেমেন্ট নিশ্চিত করতে বলেছে।',
    'audit.payment.processing': 'ব্যাংক একটি পেমেন্ট প্রক্রিয়া করছে।',
    'audit.payment.succeeded': 'একটি পেমেন্ট পাওয়া গেছে।',
    'audit.payment.failed': 'একটি পেমেন্টের চেষ্টা ব্যর্থ হয়েছে।',
    'audit.payment.refunded': 'একটি পেমেন্ট ফেরত দেওয়া হয়েছে।',
    'audit.payment.partially_refunded': 'একটি পেমেন্টের অংশ ফেরত দেওয়া হয়েছে।',
    'audit.payment.amount_mismatch': 'প্রত্যাখ্যাত: Stripe অনুরোধের চেয়ে ভিন্ন পরিমাণ জানিয়েছে।',
    'audit.payment.intent_mismatch': 'প্রত্যাখ্যাত: callpay তৈরি করেনি এমন একটি Stripe পেমেন্ট একটি অনুরোধ দাবি করেছে।',
    'audit.stripe.link_started': '{who} একটি Stripe অ্যাকাউন্ট যুক্ত করা শুরু করেছেন।',
    'audit.stripe.linked': '{who} Stripe অ্যাকাউন্ট {target} যুক্ত করেছেন।',
    'audit.stripe.relinked': '{who} অন্য একটি Stripe অ্যাকাউন্ট, {target}, যুক্ত করেছেন।',
    'audit.stripe.removed': '{who} Stripe অ্যাকাউন্ট {target} সরিয়েছেন।',
    'audit.stripe.deauthorized': 'Stripe অ্যাকাউন্ট {target} callpay-এর অনুমতি প্রত্যাহার করেছে।',
    'audit.app.disabled': '{who} পেমেন্ট অ্যাপ বন্ধ করেছেন।',
    'audit.app.enable_requested': '{who} পেমেন্ট অ্যাপের জন্য অনুরোধ করেছেন।',
    'audit.app.enable_approved': '{who} পেমেন্ট অ্যাপ অনুমোদন করেছেন।',
    'audit.app.enable_rejected': '{who} পেমেন্ট অ্যাপের অনুরোধ প্রত্যাখ্যান করেছেন।',
    'audit.clinic.upserted': '{who} ক্লিনিকটি নিবন্ধন বা নতুন নাম দিয়েছেন।',
    'audit.org.upserted': '{who} সংস্থাটি নিবন্ধন বা নতুন নাম দিয়েছেন।',
    'audit.stripe.link': '{who}-এর শুরু করা Stripe সংযোগ সম্পন্ন হয়নি; কিছুই বদলায়নি।',
    'audit.stripe.link.refused': '{who}-এর শুরু করা Stripe সংযোগ প্রত্যাখ্যাত হয়েছে; কিছুই বদলায়নি।',
    'audit.stripe.link.failed': '{who}-এর শুরু করা Stripe সংযোগ Stripe-এ ব্যর্থ হয়েছে; কিছুই বদলায়নি।',
    'audit.stripe.removed.failed': '{who} Stripe অ্যাকাউন্ট {target} সরাতে চেয়েছিলেন, কিন্তু Stripe-এর সঙ্গে যোগাযোগ করা যায়নি; এটি এখনও সংযুক্ত।',
    'audit.payment.requested.refused': '{who}-এর একটি পেমেন্টের অনুরোধ প্রত্যাখ্যাত হয়েছে।',
    'audit.payment.canceled.refused': '{who}-এর একটি বাতিলের অনুরোধ প্রত্যাখ্যাত হয়েছে।',
    'audit.payment.creating': '{who} একটি পেমেন্টের অনুরোধ শুরু করেছেন।',
    'audit.other': 'এমন কিছু ঘটেছে যা এই পাতা এখনও বর্ণনা করতে পারে না; বিস্তারিত দেখুন।',
    'role.clinician': 'চিকিৎসক', 'role.patient': 'রোগী',
    'admin.tabs': 'ক্লায়েন্ট পেমেন্টের অংশসমূহ',
    'admin.tab.settings': 'Stripe ও পেমেন্ট অ্যাপ',
    'admin.tab.payments': 'পেমেন্টসমূহ',
    'payments.filters': 'পেমেন্ট ছাঁকুন',
    'payments.from': 'শুরুর তারিখ', 'payments.to': 'শেষ তারিখ (সহ)', 'payments.status': 'অবস্থা', 'payments.status.all': 'যেকোনো অবস্থা',
    'payments.clinician': 'চিকিৎসক', 'payments.clinician.all': 'যেকোনো চিকিৎসক', 'payments.call': 'কল',
    'payments.apply': 'দেখান', 'payments.clear': 'ফিল্টার মুছুন',
    'payments.when': 'অনুরোধের সময়', 'payments.who': 'অনুরোধকারী', 'payments.what': 'কিসের জন্য', 'payments.amount': 'পরিমাণ',
    'payments.state': 'অবস্থা', 'payments.card': 'কার্ড', 'payments.links': 'Stripe',
    'payments.status.failed': 'ব্যর্থ',
    'payments.open': 'Stripe-এ খুলুন',
    'payments.history': 'ইতিহাস',
    'payments.none': 'মিলে যায় এমন কোনো পেমেন্ট নেই।',
    'payments.more': 'আরও দেখান',
    'payments.refunded': '{amount} ফেরত দেওয়া হয়েছে',
    'payments.card.line': '{brand}, শেষ চার অঙ্ক {last4}',
    'payments.source.hub': 'কলের ভেতর থেকে',
    'payments.source.webhook': 'Stripe ইভেন্ট {event}',
    'payments.source.stripe_read': 'Stripe থেকে পড়া',
    'payments.source.admin': '{who}',
    'payments.history.line': '{when}: {what} ({source})',
    'demo.title': 'callpay ডেমো কল',
    'demo.guide': 'বাঁয়ে চিকিৎসকের প্যানেল, ডানে রোগীর। বাঁয়ে $50.00-এর অনুরোধ করুন, ডানে 4242 4242 4242 4242 দিয়ে পরিশোধ করুন (যেকোনো ভবিষ্যৎ তারিখ, যেকোনো CVC)। 3-D Secure-এর জন্য 4000 0025 0000 3155 এবং প্রত্যাখ্যানের জন্য 4000 0000 0000 9995 চেষ্টা করুন।',
    'demo.admin': 'ক্লিনিক অ্যাডমিন: কনফিগার › ক্লায়েন্ট পেমেন্ট',
    'demo.dashboard': 'Stripe সিমুলেটর ড্যাশবোর্ড',
  },
};

const STORAGE_KEY = 'callpay.lang';

function pickLanguage() {
  const params = new URLSearchParams(location.search);
  const asked = params.get('lang') || safeStorage('get');
  if (asked && MESSAGES[asked]) return asked;
  for (const l of navigator.languages || [navigator.language || 'en']) {
    const base = String(l).toLowerCase().split('-')[0];
    if (MESSAGES[base]) return base;
  }
  return 'en';
}

function safeStorage(op, value) {
  try {
    if (op === 'get') return localStorage.getItem(STORAGE_KEY);
    localStorage.setItem(STORAGE_KEY, value);
  } catch (_) { /* storage can be blocked inside third-party iframes */ }
  return null;
}

export let lang = pickLanguage();

/** The message `key` in the current language, with {vars} filled in. */
export function t(key, vars = {}) {
  const text = (MESSAGES[lang] && MESSAGES[lang][key]) || MESSAGES.en[key] || key;
  return text.replace(/\{(\w+)\}/g, (_, name) => (vars[name] !== undefined ? String(vars[name]) : ''));
}

/** Fills every data-i18n element under `root`. */
export function applyI18n(root = document) {
  document.documentElement.lang = lang;
  root.querySelectorAll('[data-i18n]').forEach((el) => { el.textContent = t(el.dataset.i18n); });
  root.querySelectorAll('[data-i18n-attr]').forEach((el) => {
    for (const pair of el.dataset.i18nAttr.split(',')) {
      const [attr, key] = pair.split(':');
      el.setAttribute(attr.trim(), t(key.trim()));
    }
  });
}

/** Builds the language switch into `select` and re-renders through `rerender` on change. */
export function languageSwitch(select, rerender) {
  select.innerHTML = '';
  for (const code of Object.keys(MESSAGES)) {
    const opt = document.createElement('option');
    opt.value = code;
    opt.textContent = MESSAGES[code]['lang.name'];
    opt.selected = code === lang;
    select.appendChild(opt);
  }
  select.addEventListener('change', () => {
    lang = select.value;
    safeStorage('set', lang);
    applyI18n();
    rerender();
  });
}

/** Money for people: 5000 aud -> "$50.00" (locale-aware digits). */
/** Stripe's failure codes this catalogue words itself (decline_code first, then code). */
const DECLINES = ['insufficient_funds', 'expired_card', 'incorrect_cvc', 'incorrect_number', 'lost_card', 'stolen_card',
  'card_velocity_exceeded', 'processing_error', 'do_not_honor', 'payment_intent_authentication_failure',
  'authentication_required', 'card_declined', 'generic_decline'];

/**
 * Why a card was declined, in the page's language: from Stripe's `decline_code` or `code`
 * (never Stripe's English message), or a general sentence for codes not in the catalogue.
 */
export function decline(failure) {
  if (!failure) return t('decline.other');
  const code = [failure.decline_code, failure.code].find((c) => DECLINES.includes(c));
  return t(code ? `decline.${code}` : 'decline.other');
}

/** A hub `error` frame in the page's language, from its code (the hub's English `message` is
 * the fallback for a code this catalogue does not know yet). */
export function hubError(frame) {
  const key = `error.${frame.code}`;
  const text = t(key);
  return text !== key ? text : frame.message || '';
}

/** Bengali (and other Unicode) digits to ASCII: people type amounts as the page shows them. */
export function asciiDigits(text) {
  return text.replace(/[০-৯]/g, (d) => String(d.charCodeAt(0) - 0x09e6));
}

/** A card network as people write it ("visa" -> "Visa"); unknown names are left as they came. */
export function brand(name) {
  const names = { visa: 'Visa', mastercard: 'Mastercard', amex: 'American Express', discover: 'Discover', diners: 'Diners Club', jcb: 'JCB', unionpay: 'UnionPay', eftpos_au: 'eftpos' };
  return names[(name || '').toLowerCase()] || name || '';
}

export function money(amount, currency) {
  const zero = ['jpy', 'krw'].includes(currency);
  const value = zero ? amount : amount / 100;
  try {
    return new Intl.NumberFormat(lang === 'bn' ? 'bn-BD' : 'en-AU', { style: 'currency', currency: currency.toUpperCase() }).format(value);
  } catch (_) {
    return `${value.toFixed(zero ? 0 : 2)} ${currency.toUpperCase()}`;
  }
}

/** Date and time for people. */
export function when(ms) {
  // Bengali pages use the 24-hour clock: the locale's AM/PM markers are Latin letters.
  return new Date(ms).toLocaleString(lang === 'bn' ? 'bn-BD' : 'en-AU', { dateStyle: 'medium', timeStyle: 'short', hour12: lang !== 'bn' });
}
