#!/usr/bin/python3
"""Stand-in for HTCondor's Vault credmon (condor_credmon_vault), for tests only: no HTCondor can
be installed here. It behaves as the real one does where the bastion can see it:

- writes its pid to <spool>/pid, removes <spool>/CREDMON_COMPLETE at start and touches it after
  every scan; scans every 60 s, or at once on SIGHUP;
- for every <spool>/<user>/<name>.top, rewrites <name>.use when it is missing, when its ctime is
  older than the refresh interval, or when the .top's ctime is newer (VaultCredmon.should_renew);
- a handle's .top (<provider>_<handle>.top) without vault_token takes the parent's token, the
  parent being the name up to its last "_"; when the parent .top is gone, the handle's .top and
  .use are deleted;
- reads the access token from the vault_url in the .top with X-Vault-Token, sent to the test's
  OpenBao instead of the host the URL names; a "permission denied" deletes the .top and the .use;
- writes the .use as the bare token and a newline, mode 0400, through a temp file and a rename.

Arguments: SPOOL BAO_ADDR CA_FILE [--refresh SECONDS] [--no-refresh]
--no-refresh: keep scanning and touching CREDMON_COMPLETE but never rewrite a .use (a credmon
whose Vault reads fail). It never prints a token.
"""
import json
import os
import signal
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def should_renew(top, use, refresh):
    try:
        use_ctime = os.stat(use).st_ctime
    except FileNotFoundError:
        return True
    if time.time() - use_ctime > refresh:
        return True
    return os.stat(top).st_ctime > use_ctime


class ParentGone(Exception):
    pass


def token_of(user_dir, name):
    with open(os.path.join(user_dir, name + ".top")) as f:
        doc = json.load(f)
    if "vault_token" not in doc and "_" in name:
        parent = name.rsplit("_", 1)[0]
        try:
            with open(os.path.join(user_dir, parent + ".top")) as f:
                doc["vault_token"] = json.load(f)["vault_token"]
        except FileNotFoundError:
            raise ParentGone(parent)
    return doc


def delete(*paths):
    for p in paths:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def fetch(doc, bao, ctx):
    url = urllib.parse.urlsplit(doc["vault_url"])
    query = {"minimum_seconds": "2400"}
    if doc.get("scopes"):
        query["scopes"] = doc["scopes"]
    if doc.get("audience"):
        query["audiences"] = doc["audience"]
    target = bao.rstrip("/") + url.path + "?" + urllib.parse.urlencode(query)
    req = urllib.request.Request(target, headers={"X-Vault-Token": doc["vault_token"]})
    with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
        return json.load(r)["data"]["access_token"]


def write_use(path, token):
    tmp = path + ".credmon-tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.rename(tmp, path)


def scan(spool, bao, ctx, refresh, no_refresh):
    for user in sorted(os.listdir(spool)):
        user_dir = os.path.join(spool, user)
        if not os.path.isdir(user_dir) or os.path.islink(user_dir):
            continue
        for entry in sorted(os.listdir(user_dir)):
            if not entry.endswith(".top") or entry.startswith("."):
                continue
            name = entry[: -len(".top")]
            top = os.path.join(user_dir, entry)
            use = os.path.join(user_dir, name + ".use")
            if no_refresh or not should_renew(top, use, refresh):
                continue
            try:
                token = fetch(token_of(user_dir, name), bao, ctx)
            except ParentGone:
                delete(top, use)
                print("parent of %s/%s is gone: deleted it" % (user, name), flush=True)
                continue
            except urllib.error.HTTPError as e:
                if e.code == 403:
                    print("permission denied for %s/%s: deleting it" % (user, name), flush=True)
                    delete(top, use)
                else:
                    print("cannot refresh %s/%s: HTTP %d" % (user, name, e.code), flush=True)
                continue
            except Exception as e:  # noqa: BLE001 - a scan goes on with the next file
                print("cannot refresh %s/%s: %s" % (user, name, type(e).__name__), flush=True)
                continue
            write_use(use, token)
            print("refreshed %s/%s.use" % (user, name), flush=True)


def main():
    spool, bao, ca = sys.argv[1:4]
    refresh = 1200.0
    no_refresh = "--no-refresh" in sys.argv
    if "--refresh" in sys.argv:
        refresh = float(sys.argv[sys.argv.index("--refresh") + 1])
    ctx = ssl.create_default_context(cafile=ca)
    complete = os.path.join(spool, "CREDMON_COMPLETE")
    if os.path.exists(complete):
        os.unlink(complete)
    with open(os.path.join(spool, "pid"), "w") as f:
        f.write("%d" % os.getpid())
    # SIGHUP is only ever taken between scans: it ends the sleep, never a scan half-way.
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGHUP])
    print("credmon stand-in started", flush=True)
    while True:
        scan(spool, bao, ctx, refresh, no_refresh)
        with open(complete, "a"):
            os.utime(complete, None)
        print("scan complete", flush=True)
        if signal.sigtimedwait([signal.SIGHUP], 60) is not None:
            print("got SIGHUP", flush=True)


if __name__ == "__main__":
    main()
