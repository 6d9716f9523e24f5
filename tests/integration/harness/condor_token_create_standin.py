#!/usr/bin/python3
"""Stand-in for HTCondor's condor_token_create (no HTCondor can be installed here).

Signs an HS256 JWT with HTCondor's IDToken layout: header {"alg": "HS256", "typ": "JWT", "kid":
<key name>}; claims iss (the trust domain in <dir>/trust_domain), sub (-identity), iat, jti, and
exp / scope ("condor:/READ condor:/WRITE") only when -lifetime / -authz are given. The signing
key is <dir>/keys/<name>. Told to misbehave by <dir>/misbehave: "wrong-sub", "no-exp", "fail".
Every call's arguments are appended to <dir>/calls.
"""
import base64, hashlib, hmac, json, os, sys, time, uuid

here = os.path.dirname(os.path.abspath(__file__))
state = os.path.join(here, "..", "condor")

def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

args = sys.argv[1:]
with open(os.path.join(state, "calls"), "a") as f:
    f.write(" ".join(args) + "\n")
identity, key, lifetime, authz = None, "POOL", None, []
i = 0
while i < len(args):
    flag = args[i]
    value = args[i + 1] if i + 1 < len(args) else None
    if flag == "-identity":
        identity = value
    elif flag in ("-key", "-keyid"):
        key = value
    elif flag == "-lifetime":
        lifetime = int(value)
    elif flag == "-authz":
        authz.append(value)
    else:
        sys.stderr.write("condor_token_create: unknown option %s\n" % flag)
        sys.exit(1)
    i += 2
try:
    misbehave = open(os.path.join(state, "misbehave")).read().strip()
except FileNotFoundError:
    misbehave = ""
if misbehave == "fail":
    sys.stderr.write("condor_token_create: failed to read the signing key %s\n" % key)
    sys.exit(1)
try:
    secret = open(os.path.join(state, "keys", key), "rb").read()
except FileNotFoundError:
    sys.stderr.write("condor_token_create: no signing key named %s\n" % key)
    sys.exit(1)
if identity is None:
    sys.stderr.write("condor_token_create: -identity is required\n")
    sys.exit(1)
now = int(time.time())
claims = {"iat": now, "iss": open(os.path.join(state, "trust_domain")).read().strip(), "jti": uuid.uuid4().hex,
          "sub": "someone-else@" + identity.split("@", 1)[-1] if misbehave == "wrong-sub" else identity}
if lifetime is not None and misbehave != "no-exp":
    claims["exp"] = now + lifetime
if authz:
    claims["scope"] = " ".join("condor:/" + a for a in authz)
header = {"alg": "HS256", "kid": key, "typ": "JWT"}
signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
token = signing_input + "." + b64(signature)
# Every token minted, for the test's leak check (a refused one never reaches a file).
with open(os.path.join(state, "minted"), "a") as f:
    f.write(token + "\n")
print(token)
