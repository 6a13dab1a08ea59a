#!/usr/bin/env python3
"""A DNS server that never answers: reads every UDP query and accepts every
TCP connection, replies to nothing (a resolver during a large outage).

    bench/blackhole_dns.py PORT      (127.0.0.1 only; runs until killed)
"""
import socket
import sys
import threading

port = int(sys.argv[1])
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("127.0.0.1", port))
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("127.0.0.1", port))
tcp.listen(128)
held = []  # accepted TCP connections stay open and silent


def swallow_tcp():
    while True:
        conn, _ = tcp.accept()
        held.append(conn)


threading.Thread(target=swallow_tcp, daemon=True).start()
queries = 0
while True:
    udp.recvfrom(4096)
    queries += 1
