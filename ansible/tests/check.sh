#!/usr/bin/env bash
# Checks for the Ansible deployment in ansible/: the sample playbook and inventory parse, the
# role's templates render with its defaults, the rendered services.yaml reads back as the
# inventory it was given, and the rendered systemd unit passes `systemd-analyze verify`.
# Installs ansible-core into a private venv on first use. Exit status 0 only if every check passed.
set -uo pipefail
cd "$(dirname "$0")/../.."

. ansible/tests/lib.sh
ensure_ansible

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
ansible_env "$tmp"

# 1. The sample inventory parses and puts a host in the group site.yml targets.
if "$bin/ansible-inventory" -i ansible/inventory.example.yml --graph token_bastion >"$tmp/inventory.log" 2>&1 \
    && grep -q -- '--cms-token-bastion01' "$tmp/inventory.log"; then
    pass "inventory.example.yml parses, group token_bastion has a host"
else
    cat "$tmp/inventory.log"
    fail "inventory.example.yml parses, group token_bastion has a host"
fi

# 2. The playbook, the role and every task file it imports are valid.
if "$bin/ansible-playbook" --syntax-check -i ansible/inventory.example.yml ansible/site.yml >"$tmp/syntax.log" 2>&1; then
    pass "ansible-playbook --syntax-check site.yml"
else
    cat "$tmp/syntax.log"
    fail "ansible-playbook --syntax-check site.yml"
fi

# 3. The templates render with the role's defaults (plus an environment entry, to exercise the
#    loop); services.yaml written from the repository's example reads back unchanged. The unit
#    gets a stand-in binary path, because systemd-analyze verify wants ExecStart to exist.
mkdir -p "$tmp/out" "$tmp/bin"
printf '#!/bin/sh\nexit 0\n' >"$tmp/bin/token-bastion"
chmod 0755 "$tmp/bin/token-bastion"
if "$bin/ansible-playbook" -i localhost, -c local ansible/tests/render.yml \
    -e ansible_python_interpreter="$bin/python" \
    -e out_dir="$tmp/out" -e services_example="$PWD/services.yaml" \
    -e token_bastion_binary_path="$tmp/bin/token-bastion" \
    -e '{"token_bastion_environment": {"KRB5_CONFIG": "/etc/krb5.conf"}}' >"$tmp/render.log" 2>&1; then
    pass "templates render; services.yaml from a variable reads back as the same inventory; CA paths end in one slash"
else
    cat "$tmp/render.log"
    fail "templates render; services.yaml from a variable reads back as the same inventory; CA paths end in one slash"
fi

# 4. The rendered unit, as systemd reads it.
unit="$tmp/out/token-bastion.service"
if ! command -v systemd-analyze >/dev/null; then
    echo "SKIP: systemd-analyze verify (systemd-analyze is not installed here)"
elif [ ! -f "$unit" ]; then
    fail "systemd-analyze verify token-bastion.service (the unit did not render)"
elif SYSTEMD_LOG_LEVEL=warning systemd-analyze verify "$unit" >"$tmp/verify.log" 2>&1 \
    && ! grep -q -i -e 'token-bastion.service:' -e 'unknown' "$tmp/verify.log"; then
    pass "systemd-analyze verify token-bastion.service"
else
    cat "$tmp/verify.log"
    fail "systemd-analyze verify token-bastion.service"
fi

summary
