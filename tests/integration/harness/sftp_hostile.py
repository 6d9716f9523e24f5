#!/usr/bin/python3
"""Stand-in for a hostile SFTP server: no real server can be made to break the protocol on
purpose, so this one speaks just enough of SFTP version 3 to be taken for sftp-server (the
version packet with posix-rename@openssh.com and fsync@openssh.com), then answers the first
request it gets the way MODE says, and reads and drops everything after.

Usage: sftp_hostile.py MODE LOGFILE. Modes:
  foreign   a status for a request id that was never sent;
  oversize  a packet header announcing 1 GiB;
  names     a name list announcing a million entries in a packet of a few bytes;
  type      a packet of a type no SFTP server sends.
What it did is appended to LOGFILE.
"""
import os
import struct
import sys


def read_exact(n):
    buf = b""
    while len(buf) < n:
        chunk = os.read(0, n - len(buf))
        if not chunk:
            sys.exit(0)
        buf += chunk
    return buf


def packet():
    (length,) = struct.unpack(">I", read_exact(4))
    return read_exact(length)


def send(body):
    data = struct.pack(">I", len(body)) + body
    while data:
        data = data[os.write(1, data):]


def string(s):
    return struct.pack(">I", len(s)) + s


def main():
    mode, log = sys.argv[1], sys.argv[2]
    init = packet()
    assert init[0] == 1, "SSH_FXP_INIT first"
    send(bytes([2]) + struct.pack(">I", 3) + string(b"posix-rename@openssh.com") + string(b"1") + string(b"fsync@openssh.com") + string(b"1"))
    request = packet()
    kind, rid = request[0], struct.unpack(">I", request[1:5])[0]
    if mode == "foreign":
        send(bytes([101]) + struct.pack(">II", rid + 1000, 0) + string(b"") + string(b""))
    elif mode == "oversize":
        os.write(1, struct.pack(">I", 1 << 30) + bytes([101]) + struct.pack(">I", rid))
    elif mode == "names":
        send(bytes([104]) + struct.pack(">II", rid, 1_000_000) + string(b"x"))
    elif mode == "type":
        send(bytes([99]) + struct.pack(">I", rid))
    with open(log, "a") as f:
        f.write(f"{mode}: answered request {rid} of type {kind}\n")
    while os.read(0, 65536):
        pass


main()
