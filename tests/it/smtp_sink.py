"""A real SMTP server on loopback for callpay's receipt tests: aiosmtpd, printing each message it
receives as one JSON line, decoded by Python's own e-mail package (an implementation independent
of the one that wrote the message). Usage: smtp_sink.py PORT; runs until stdin closes."""
import email
import json
import sys
from email import policy

try:
    from aiosmtpd.controller import Controller
except ImportError:
    print(json.dumps({"error": "aiosmtpd is not installed: run `pip install aiosmtpd` (scripts/test does)"}), flush=True)
    sys.exit(3)


class Handler:
    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or envelope.content
        msg = email.message_from_bytes(raw, policy=policy.default)
        body = msg.get_body(preferencelist=("plain",))
        print(json.dumps({
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "from": str(msg["From"]),
            "to": str(msg["To"]),
            "subject": str(msg["Subject"]),
            "raw_headers": raw.split(b"\r\n\r\n", 1)[0].decode("ascii", "replace"),
            "content_type": msg.get_content_type(),
            "charset": body.get_content_charset(),
            "transfer_encoding": body.get("Content-Transfer-Encoding"),
            "body": body.get_content(),
        }, ensure_ascii=False), flush=True)
        return "250 OK"


controller = Controller(Handler(), hostname="127.0.0.1", port=int(sys.argv[1]))
controller.start()
print(json.dumps({"ready": int(sys.argv[1])}), flush=True)
sys.stdin.read()
controller.stop()
