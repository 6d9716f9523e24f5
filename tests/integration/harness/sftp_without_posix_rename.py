#!/usr/bin/python3
"""Stand-in for an SFTP server without OpenSSH's posix-rename@openssh.com extension.

No such server can be installed here, so this runs OpenSSH's own sftp-server and removes that
one extension from the SSH_FXP_VERSION packet it sends first; everything else passes through
unchanged. Usage: sftp_without_posix_rename.py LOGFILE (sftp-server's -l DEBUG3 log goes there).
"""
import os
import struct
import subprocess
import sys
import threading

HIDDEN = b"posix-rename@openssh.com"


def read_exact(fd, n):
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            sys.exit(0)
        buf += chunk
    return buf


def write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]


def main():
    with open(sys.argv[1], "ab") as log:
        child = subprocess.Popen(
            ["/usr/lib/openssh/sftp-server", "-e", "-l", "DEBUG3"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, bufsize=0,
        )

    def pump_in():
        while True:
            data = os.read(0, 65536)
            if not data:
                break
            write_all(child.stdin.fileno(), data)
        child.stdin.close()

    threading.Thread(target=pump_in, daemon=True).start()
    out = child.stdout.fileno()
    length = struct.unpack(">I", read_exact(out, 4))[0]
    body = read_exact(out, length)
    kept, rest = body[:5], body[5:]  # type (SSH_FXP_VERSION) and version
    while rest:
        n = struct.unpack(">I", rest[:4])[0]
        name, rest = rest[4:4 + n], rest[4 + n:]
        m = struct.unpack(">I", rest[:4])[0]
        data, rest = rest[4:4 + m], rest[4 + m:]
        if name != HIDDEN:
            kept += struct.pack(">I", len(name)) + name + struct.pack(">I", len(data)) + data
    write_all(1, struct.pack(">I", len(kept)) + kept)
    while True:
        data = os.read(out, 65536)
        if not data:
            break
        write_all(1, data)
    child.wait()


main()
