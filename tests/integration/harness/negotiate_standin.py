"""STAND-IN for HTVault's Kerberos login, used by the integration tests only.

OpenBao has no Kerberos auth plugin, so this small HTTPS server plays the Vault side of a SPNEGO
login and nothing else:

* `POST /v1/auth/<kerberos mount>/login` with `Authorization: Negotiate <token>`: the token is
  verified with GSSAPI against the `host/` keytab (a real acceptor, a real KDC's ticket). The
  authenticated principal is looked up in the logins file, which maps mount -> principal -> a
  new *real* OpenBao token, a child of the one the harness created with that service's policy
  (so each login yields its own token, as Vault's does); the answer has Vault's
  login shape (`auth.client_token`, `lease_duration`, `policies`).
* every other request is forwarded unchanged to the real OpenBao, so everything after the login
  (lookup-self, access-token reads, child tokens) runs against the real server.

Run with Debian's /usr/bin/python3 (python3-gssapi). Secrets: the OpenBao tokens come from the
logins file (mode 0600), never from the command line; the Negotiate tokens received are appended
to --seen so the harness can make sure the product never printed them; no token is logged.
"""

import argparse
import http.server
import json
import os
import re
import socketserver
import ssl
import sys
import urllib.error
import urllib.request
from base64 import b64decode

import gssapi

LOGIN_PATH = re.compile(r"^/v1/auth/([^?]+)/login$")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--upstream-ca", required=True)
    ap.add_argument("--keytab", required=True)
    ap.add_argument("--logins", required=True)
    ap.add_argument("--seen", required=True)
    args = ap.parse_args()

    upstream_tls = ssl.create_default_context(cafile=args.upstream_ca)
    acceptor = gssapi.Credentials(usage="accept", store={"keytab": args.keytab})

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *a):
            # The default line carries the path (no query secrets here) but never headers.
            sys.stdout.write("request %s\n" % (fmt % a))
            sys.stdout.flush()

        def reply(self, status, body, headers=()):
            data = json.dumps(body).encode() if not isinstance(body, bytes) else body
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def body(self):
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def kerberos_login(self, mount):
            self.body()
            auth = self.headers.get("Authorization", "")
            if not auth.startswith("Negotiate "):
                return self.reply(401, {"errors": ["missing Negotiate authorization"]}, [("WWW-Authenticate", "Negotiate")])
            token = auth[len("Negotiate "):].strip()
            with open(args.seen, "a") as f:
                f.write(token + "\n")
            try:
                ctx = gssapi.SecurityContext(creds=acceptor, usage="accept")
                ctx.step(b64decode(token))
                principal = str(ctx.initiator_name)
            except Exception as e:  # a bad token, a ticket for another service, a replay
                sys.stdout.write("login mount=%s rejected: %s\n" % (mount, type(e).__name__))
                sys.stdout.flush()
                return self.reply(401, {"errors": ["SPNEGO token rejected"]})
            with open(args.logins) as f:
                logins = json.load(f)
            grant = logins.get(mount, {}).get(principal)
            sys.stdout.write("login mount=%s principal=%s granted=%s\n" % (mount, principal, grant is not None))
            sys.stdout.flush()
            if mount not in logins:
                return self.reply(405, {"errors": ["no handler for route \"auth/%s/login\"" % mount]})
            if grant is None:
                return self.reply(403, {"errors": ["permission denied"]})
            # Like a real login, every login yields a new token: a child of the token the
            # harness granted, minted on the real OpenBao (so the product may revoke it).
            req = urllib.request.Request(
                args.upstream + "/v1/auth/token/create",
                data=json.dumps({"ttl": "%ds" % grant["lease_duration"], "renewable": False}).encode(),
                method="POST",
            )
            req.add_header("X-Vault-Token", grant["token"])
            with urllib.request.urlopen(req, context=upstream_tls, timeout=20) as r:
                issued = json.load(r)["auth"]["client_token"]
            # Recorded (by mount) for the harness: to check which login the product used, and
            # that the token never leaks.
            with open(os.path.join(os.path.dirname(args.seen), "issued-tokens"), "a") as f:
                f.write("%s %s\n" % (mount, issued))
            return self.reply(200, {"auth": {
                "client_token": issued,
                "lease_duration": grant["lease_duration"],
                "policies": grant["policies"],
                "renewable": False,
            }})

        def forward(self):
            data = self.body()
            req = urllib.request.Request(args.upstream + self.path, data=data if data else None, method=self.command)
            for k in ("X-Vault-Token", "Content-Type", "X-Vault-Request"):
                if self.headers.get(k):
                    req.add_header(k, self.headers[k])
            try:
                with urllib.request.urlopen(req, context=upstream_tls, timeout=20) as r:
                    return self.reply(r.status, r.read())
            except urllib.error.HTTPError as e:
                return self.reply(e.code, e.read())

        def do_POST(self):
            m = LOGIN_PATH.match(self.path)
            if m and m.group(1).startswith("kerberos-"):
                return self.kerberos_login(m.group(1))
            return self.forward()

        do_GET = forward
        do_PUT = forward
        do_DELETE = forward

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True

    host, port = args.listen.rsplit(":", 1)
    server = Server((host, int(port)), Handler)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(args.cert, args.key)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    print("stand-in listening on %s pid %d" % (args.listen, os.getpid()), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
