#!/usr/bin/env bash
# Applies the role for real on this machine, as root with connection local, through site.yml:
# a throw-away service user and unit name, every other path under a temporary directory, and
# systemd offline (SYSTEMD_OFFLINE=1: no systemd runs as PID 1 here). Everything is removed
# afterwards. Checks owners and modes, that a second run changes nothing, that an invalid
# inventory fails the play and installs nothing, that a new binary goes live (and is
# restarted) only once it has accepted the inventory, and records the unit's exposure score.
# The binary deployed is target/debug/token-bastion, built here when missing.
# Exit status 0 only if every check passed.
set -uo pipefail
cd "$(dirname "$0")/../.."
repo="$PWD"

. ansible/tests/lib.sh

if [ "$(id -u)" -ne 0 ]; then
    echo "SKIP: applying the role (needs root: it creates a user and chowns files)"
    exit 0
fi
ensure_ansible
if [ ! -x target/debug/token-bastion ]; then
    cargo build --locked --bin token-bastion || { fail "cargo build --bin token-bastion"; summary; exit 1; }
fi

name="tbci-$(tr -dc 'a-z0-9' </dev/urandom | head -c 8)"
root="$(mktemp -d /tmp/token-bastion-apply.XXXXXX)"
unit="/etc/systemd/system/$name.service"
wants="/etc/systemd/system/multi-user.target.wants/$name.service"
made_user=false
cleanup() {
    rm -f "$unit" "$wants"
    if $made_user; then
        userdel "$name" 2>/dev/null
        groupdel "$name" 2>/dev/null
    fi
    rm -rf "$root"
}
trap cleanup EXIT
chmod 0755 "$root"  # the service user must reach the files under it
ansible_env "$root"
export ANSIBLE_CALLBACK_PLUGINS="$repo/ansible/tests/callback_plugins" ANSIBLE_CALLBACKS_ENABLED=task_results
# Fewer processes a task; no facts: the role needs them only for token_bastion_packages.
export ANSIBLE_PIPELINING=true ANSIBLE_GATHERING=explicit

# The controller's side: binary, secrets, CA certificates, services.yaml.
ctl="$root/controller"
host="$root/host"
cfg="$host/etc/token-bastion"
mkdir -p "$ctl/ca" "$host/usr/local/bin" "$host/etc" "$host/var/lib"
chmod 0700 "$ctl"
cp target/debug/token-bastion "$ctl/token-bastion"
head -c 600 /dev/urandom >"$ctl/prodacct.keytab"
printf 'stand-in SSH key: check reads modes, not keys\n' >"$ctl/id_ed25519"
# A real (throw-away) CA certificate: check refuses a CA file that holds none.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=tbci-ca \
    -keyout "$ctl/ca-key.pem" -out "$ctl/ca/example-ca.pem" 2>/dev/null

# The service user exists before the first run, so that one service's keytab can be one the
# operator put in place by hand (owned by that user), not through the role; the role adopts
# the account.
if getent passwd "$name" >/dev/null || ! useradd --system --user-group --no-create-home --shell /usr/sbin/nologin "$name"; then
    fail "useradd $name"
    summary
    exit 1
fi
made_user=true
install -d -m 0750 -o root -g "$name" "$cfg" "$cfg/keytabs"
install -m 0600 -o "$name" -g "$name" /dev/null "$cfg/keytabs/handacct.keytab"

write_services() {  # $1: extra text under hosts.schedd1
    cat >"$ctl/services.yaml" <<YAML
broker:
  url: https://vault.example.org:8200
  ca_dir: $host/etc/grid-security/certificates
  issuer: cms
  vault_url: https://vault.example.org:8200
  auth:
    method: kerberos
    principal: "{account}@EXAMPLE.ORG"
    keytab: $cfg/keytabs/{account}.keytab
issuers:
  cms:
    url: https://iam.example.org/
    ca_dir: $host/etc/grid-security/certificates
hosts:
  schedd1:
    address: schedd1.example.org
    user: root
    key_file: $cfg/ssh/id_ed25519
    known_hosts: $cfg/ssh/known_hosts
    spool: /var/lib/condor/oauth_credentials
$1
defaults:
  owners: [owners@example.org]
notify:
  smtp:
    host: smtp.example.org
    from: token-bastion@example.org
    username: bastion
    password_file: $cfg/smtp/password
  admins: [oncall@example.org]
services:
  prod:
    account: prodacct
    required: [compute.create]
    destinations: [{credd: {hosts: [schedd1]}}]
  hand:
    account: handacct
    required: [compute.create]
    destinations: [{credd: {hosts: [schedd1]}}]
  ci:
    account: ciacct
    auth: {method: approle, role_id_file: $cfg/approle/ci.role_id, secret_id_file: $cfg/approle/ci.secret_id}
    required: [compute.read]
    destinations: [{credd: {hosts: [schedd1]}}]
  ops:
    account: opsacct
    auth: {method: token_file, path: $cfg/tokens/ops.token}
    required: [compute.read]
    destinations: [{credd: {hosts: [schedd1]}}]
YAML
}
write_services ""

cat >"$root/inventory.yml" <<YAML
all:
  children:
    token_bastion:
      hosts:
        localhost:
          ansible_connection: local
          ansible_python_interpreter: $bin/python
          ansible_become: false
      vars:
        token_bastion_user: $name
        token_bastion_group: $name
        token_bastion_binary_src: $ctl/token-bastion
        token_bastion_binary_path: $host/usr/local/bin/token-bastion
        token_bastion_config_dir: $cfg
        token_bastion_state_dir: $host/var/lib/token-bastion
        token_bastion_ca_dir: $host/etc/grid-security/certificates
        token_bastion_ca_certs_src: $ctl/ca/
        token_bastion_service_name: $name
        token_bastion_systemd_offline: true
        token_bastion_packages: []
        token_bastion_services_src: $ctl/services.yaml
        token_bastion_ssh_keys: [{name: id_ed25519, src: $ctl/id_ed25519}]
        token_bastion_known_hosts: ["schedd1.example.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"]
        token_bastion_keytabs: [{name: prodacct.keytab, src: $ctl/prodacct.keytab}]
        token_bastion_approle_role_ids: [{name: ci, content: "0b3c5f5e-role-id"}]
        token_bastion_approle_secret_ids: [{name: ci, content: "stand-in-secret-id"}]
        token_bastion_smtp_password: stand-in-password
        token_bastion_secret_files: [{path: $cfg/tokens/ops.token, content: "stand-in-vault-token"}]
YAML

n=0
# Runs site.yml with -v; $1 names the run. Sets $log (what it printed), $out (one JSON line a
# task result) and $rc.
apply() {
    n=$((n + 1))
    log="$root/run$n.log"
    out="$root/run$n.jsonl"
    : >"$out"
    TB_TASK_RESULTS="$out" "$bin/ansible-playbook" -v -i "$root/inventory.yml" ansible/site.yml >"$log" 2>&1
    rc=$?
    echo "run $n ($1): ansible-playbook exit $rc, $(changed) changed"
}
changed() { "$bin/python" ansible/tests/results.py "$out" changed; }
status() { "$bin/python" ansible/tests/results.py "$out" status "$1"; }
show_run() { "$bin/python" ansible/tests/results.py "$out" failed; tail -n 15 "$log"; }
sha() { sha256sum "$1" 2>/dev/null | cut -d' ' -f1; }

check_run() {  # $1: what; then a command that must succeed
    local what="$1"
    shift
    if "$@"; then pass "$what"; else show_run; fail "$what"; fi
}

# 1. First deployment.
apply "first deployment"
check_run "first deployment succeeds" test "$rc" -eq 0
if [ "$rc" -ne 0 ]; then
    summary
    exit 1
fi

modes_ok=true
expect() {  # path mode owner:group
    local got
    got="$(stat -c '%a %U:%G' "$1" 2>&1)"
    if [ "$got" != "$2 $3" ]; then
        echo "  $1: $got, expected $2 $3"
        modes_ok=false
    fi
}
expect "$host/usr/local/bin/token-bastion" 755 root:root
expect "$host/usr/local/bin/.token-bastion.staged" 755 root:root
for d in "$cfg" "$cfg/ssh" "$cfg/keytabs" "$cfg/approle" "$cfg/smtp" "$cfg/tokens"; do
    expect "$d" 750 "root:$name"
done
expect "$cfg/services.yaml" 640 "root:$name"
expect "$cfg/services.yaml.staged" 640 "root:$name"
for f in ssh/id_ed25519 keytabs/prodacct.keytab approle/ci.secret_id smtp/password tokens/ops.token; do
    expect "$cfg/$f" 600 "$name:$name"
done
expect "$cfg/approle/ci.role_id" 640 "root:$name"
expect "$cfg/ssh/known_hosts" 644 root:root
expect "$host/var/lib/token-bastion" 700 "$name:$name"
expect "$host/etc/grid-security/certificates" 755 root:root
expect "$host/etc/grid-security/certificates/example-ca.pem" 644 root:root
expect "$unit" 644 root:root
account="$(getent passwd "$name" | cut -d: -f6,7)"
if [ "$account" != "$host/var/lib/token-bastion:/usr/sbin/nologin" ]; then
    echo "  $name: home and shell $account"
    modes_ok=false
fi
check_run "owners and modes are the ones the README promises" $modes_ok
check_run "the post-deploy check --strict ran as the service user and passed" \
    test "$(status 'Check the deployed inventory as the service user (token-bastion check --strict)')" = ok
check_run "systemctl enable with SYSTEMD_OFFLINE=1 linked the unit into multi-user.target" \
    test "$(readlink "$wants")" = "$unit"
check_run "offline, the restart is left to the next start" \
    test "$(status 'Leave the restart to the next start (systemd offline)')" = ok

if command -v systemd-analyze >/dev/null; then
    exposure="$(systemd-analyze security --offline=true "$unit" 2>/dev/null | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')"
    echo "systemd-analyze security --offline=true $name.service: exposure ${exposure:-unknown}"
    check_run "exposure score ${exposure:-unknown} is at most 1.6" \
        awk -v s="${exposure:-99}" 'BEGIN { exit !(s <= 1.6) }'
else
    echo "SKIP: systemd-analyze security (systemd-analyze is not installed here)"
fi

# 2. Nothing to do.
apply "again, nothing changed"
check_run "a second run succeeds and changes nothing" test "$rc" -eq 0 -a "$(changed)" = 0
check_run "a second run restarts nothing" \
    test "$(status 'Remember that token-bastion was restarted')" = absent

# 3. A new binary with an invalid inventory: the play fails, neither goes in, and nothing is
#    left for a later run to forget (site.yml forces handlers: any notified one would run).
live_services="$(sha "$cfg/services.yaml")"
live_binary="$(sha "$host/usr/local/bin/token-bastion")"
write_services "    colour: blue"
cat target/debug/token-bastion >"$ctl/token-bastion"
printf '\nrelease 2\n' >>"$ctl/token-bastion"  # another file, the same program
new_binary="$(sha "$ctl/token-bastion")"
apply "new binary, invalid services.yaml"
check_run "an invalid services.yaml fails the play at its check" \
    test "$rc" -ne 0 -a "$(status 'Check the staged services.yaml with the staged binary, as the service user')" = failed
check_run "the check names the staged file, line, column and the unknown field" \
    grep -q "$cfg/services.yaml.staged:[0-9]*:[0-9]*: hosts.schedd1.colour" "$log"
check_run "the check ran the new (staged) binary on the new (staged) services.yaml" \
    grep -q -F "\"$host/usr/local/bin/.token-bastion.staged\", \"--config\", \"$cfg/services.yaml.staged\"" "$log"
check_run "the installed services.yaml and binary are untouched" \
    test "$(sha "$cfg/services.yaml")" = "$live_services" -a "$(sha "$host/usr/local/bin/token-bastion")" = "$live_binary"
check_run "no restart or reload was due" \
    test "$(status 'Remember that token-bastion was restarted')" = absent -a "$(status 'Reload token-bastion')" = absent

# 4. The inventory fixed: the new binary goes in and is restarted.
write_services ""
apply "new binary, services.yaml fixed"
check_run "with the inventory fixed, the play succeeds" test "$rc" -eq 0
check_run "the new binary checked the unchanged services.yaml before it went in" \
    test "$(status 'Check the staged services.yaml with the staged binary, as the service user')" = ok
check_run "the new binary is in place and restarted" \
    test "$(sha "$host/usr/local/bin/token-bastion")" = "$new_binary" \
    -a "$(status 'Remember that token-bastion was restarted')" = ok

# 5. A keytab the service user cannot read: `check --strict` opens every file the inventory
#    names as the user running it, so the post-deploy check fails and names it.
chown root:root "$cfg/keytabs/handacct.keytab"
apply "keytab left root:root 0600"
check_run "a keytab left root:root 0600 fails the post-deploy check --strict" \
    test "$rc" -ne 0 -a "$(status 'Check the deployed inventory as the service user (token-bastion check --strict)')" = failed
check_run "the failure names the keytab" grep -q "$cfg/keytabs/handacct.keytab" "$log"

summary
