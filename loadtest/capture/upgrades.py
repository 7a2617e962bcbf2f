#!/usr/bin/env python3
"""Compares what nginx logged for each upstream attempt of a WebSocket upgrade with what the
instance really answered on that connection, from a loopback packet capture.

Capture during a run kept with CALLPAY_LOADTEST_INSTANCE_LOG (which writes nginx's access log):

    tcpdump -i lo -s 700 -B 262144 -w cap.pcap \\
      'tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) != 0
       or tcp[((tcp[12]&0xf0)>>2):4] = 0x47455420 or tcp[((tcp[12]&0xf0)>>2):4] = 0x48545450'

then: upgrades.py cap.pcap <logs>/nginx-access.log <nginx port>

A client's request and nginx's requests to the instances for it share one Sec-WebSocket-Key
(nginx passes it on unchanged); the access log names the client's address and port, and per
attempt the instance, its status and its connect time ("-" when nginx had not sent its request).
Prints, per attempt, nginx's status against the instance's real first answer, and for each
attempt that nginx logged as 503 while the instance answered 101 (a phantom), what the attempt
before it was.
"""
import collections
import re
import struct
import sys


def packets(path):
    """(time, src, sport, dst, dport, tcp flags, payload) for each IPv4 TCP packet."""
    with open(path, 'rb') as f:
        head = f.read(24)
        nano = struct.unpack('<I', head[:4])[0] == 0xa1b23c4d
        link = struct.unpack('<I', head[20:24])[0]
        skip = {1: 14, 113: 16}.get(link, 4)
        while len(rec := f.read(16)) == 16:
            sec, frac, incl, _ = struct.unpack('<IIII', rec)
            ip = f.read(incl)[skip:]
            if len(ip) < 20 or ip[0] >> 4 != 4:
                continue
            tcp = ip[(ip[0] & 15) * 4:]
            sport, dport = struct.unpack('>HH', tcp[:4])
            yield (sec + frac / (1e9 if nano else 1e6), '.'.join(map(str, ip[12:16])), sport,
                   '.'.join(map(str, ip[16:20])), dport, tcp[13], tcp[(tcp[12] >> 4) * 4:])


def connections(path):
    """Each connection's client address, server port, upgrade key and first answer."""
    conns, done = {}, []
    for t, src, sport, dst, dport, flags, payload in packets(path):
        if flags & 2 and not flags & 16:  # SYN: a new connection on this 4-tuple
            old = conns.pop((src, sport, dst, dport), None)
            if old:
                done.append(old)
            conns[(src, sport, dst, dport)] = {'client': f'{src}:{sport}', 'port': dport, 'syn': t,
                                               'key': None, 'answer': None}
            continue
        c = conns.get((src, sport, dst, dport))
        if c and payload[:4] == b'GET ' and c['key'] is None:
            for line in payload.split(b'\r\n'):
                if line.lower().startswith(b'sec-websocket-key:'):
                    c['key'] = line.split(b':', 1)[1].strip().decode()
        c = conns.get((dst, dport, src, sport))
        if c and payload[:5] == b'HTTP/' and c['answer'] is None:
            c['answer'] = payload.split(b' ', 2)[1].decode()
    return done + list(conns.values())


def main(pcap, access_log, lb_port):
    conns = connections(pcap)
    client_keys = collections.defaultdict(list)  # client address -> [(syn, key)]
    answers = collections.defaultdict(list)  # key -> [(instance port, answer)]
    for c in conns:
        if not c['key']:
            continue
        if c['port'] == lb_port:
            client_keys[c['client']].append((c['syn'], c['key']))
        else:
            answers[c['key']].append((c['port'], c['answer']))
    versus, phantoms_after, after_503 = collections.Counter(), collections.Counter(), collections.Counter()
    line_re = re.compile(r'(\S+) \d+ (\S+) "GET \S*/ws\S* [^"]*" \d+ \S+ up=(.*) ups=(.*) uct=(.*) uht=')
    for line in open(access_log):
        m = line_re.match(line)
        if not m:
            continue
        keys = [k for syn, k in client_keys.get(m.group(2), []) if syn <= float(m.group(1))]
        if not keys:
            continue
        real = collections.defaultdict(list)
        for port, answer in answers.get(keys[-1], []):
            real[port].append(answer)
        ups = [u.strip().rsplit(':', 1)[-1] for u in m.group(3).split(',')]
        statuses = [s.strip() for s in m.group(4).split(',')]
        connect = [u.strip() for u in m.group(5).split(',')]
        for i, (port, status) in enumerate(zip(ups, statuses)):
            got = real.get(int(port)) if port.isdigit() else None
            versus[(status, '/'.join(a or '-' for a in got) if got else 'no request seen')] += 1
            if i > 0 and statuses[i - 1] == '503':
                when = 'before nginx sent its request' if connect[i - 1] == '-' else 'after the request'
                answered = '/'.join(a or '-' for a in got) if got else 'no request seen'
                after_503[(when, status, answered)] += 1
            if status == '503' and got and '101' in got:
                before = 'first attempt' if i == 0 else \
                    f"{statuses[i - 1]} {'before nginx sent its request' if connect[i - 1] == '-' else 'after the request'}"
                phantoms_after[before] += 1
    print('nginx logged / instance answered (attempts):')
    for (status, got), n in versus.most_common():
        print(f'  {n:7d}  {status:>4} / {got}')
    print('phantom 503s (instance answered 101), by the attempt before:')
    for before, n in phantoms_after.most_common():
        print(f'  {n:7d}  {before}')
    if not phantoms_after:
        print('        0')
    print("attempts after an instance's 503, by when that 503 came: nginx logged / instance answered:")
    for (when, status, got), n in sorted(after_503.items()):
        print(f'  {n:7d}  503 {when}: {status} / {got}')


if __name__ == '__main__':
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
