"""A real SMTP server on loopback for callpay's receipt tests: aiosmtpd, printing each message it
receives as one JSON line, decoded by Python's own e-mail package (an implementation independent
of the one that wrote the message).

Usage: smtp_sink.py PORT [STALL_FIRST_RCPT_MS]. With a stall, the first session to name a
recipient waits that long before the server answers it (a mail server that hangs mid-session),
and later sessions are answered at once. Reads commands from stdin, one a line: `count` prints
{"received": N}, the messages taken so far, after every message line already printed (so a
test can count exactly what arrived). Runs until stdin closes."""
import asyncio
import email
import json
import sys
import threading
from email import policy

try:
    from aiosmtpd.controller import Controller
except ImportError:
    print(json.dumps({"error": "aiosmtpd is not installed: run `pip install aiosmtpd` (scripts/test does)"}), flush=True)
    sys.exit(3)

# Messages and printing are shared by the server's thread and the stdin reader.
lock = threading.Lock()
received = 0


def emit(obj):
    print(json.dumps(obj, ensure_ascii=False), flush=True)


class Handler:
    def __init__(self, stall_first_rcpt_s):
        self.stall_first_rcpt_s = stall_first_rcpt_s
        self.stalled = False

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.stall_first_rcpt_s > 0 and not self.stalled:
            self.stalled = True
            await asyncio.sleep(self.stall_first_rcpt_s)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        global received
        raw = envelope.original_content or envelope.content
        msg = email.message_from_bytes(raw, policy=policy.default)
        body = msg.get_body(preferencelist=("plain",))
        with lock:
            received += 1
            emit({
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
            })
        return "250 OK"


port = int(sys.argv[1])
stall_ms = int(sys.argv[2]) if len(sys.argv) > 2 else 0
controller = Controller(Handler(stall_ms / 1000), hostname="127.0.0.1", port=port)
controller.start()
emit({"ready": port})
for line in sys.stdin:
    if line.strip() == "count":
        with lock:
            emit({"received": received})
controller.stop()
