# Shared by check.sh and apply.sh (sourced, not run): PASS/FAIL bookkeeping, ansible-core in a
# private venv, and an Ansible environment that reads nothing from the working or home directory.

venv="${XDG_CACHE_HOME:-$HOME/.cache}/token-bastion/ansible-venv"
bin="$venv/bin"
passed=0
failed=0
pass() { echo "PASS: $1"; passed=$((passed + 1)); }
fail() { echo "FAIL: $1"; failed=$((failed + 1)); }
summary() { echo "$passed passed, $failed failed"; [ "$failed" -eq 0 ]; }

# Installs ansible-core into $venv on first use; exits (after a FAIL line) if it cannot.
ensure_ansible() {
    [ -x "$bin/ansible-playbook" ] && return 0
    echo "Installing ansible-core into $venv"
    if ! /usr/bin/python3 -c 'import ensurepip' 2>/dev/null && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    fi
    rm -rf "$venv"
    if ! { /usr/bin/python3 -m venv "$venv" && "$bin/pip" install --quiet --disable-pip-version-check ansible-core; }; then
        fail "install ansible-core into $venv"
        summary
        exit 1
    fi
}

# Ansible's own state under $1 (a temporary directory the caller removes); no ansible.cfg from
# the working or the home directory.
ansible_env() {
    export ANSIBLE_HOME="$1/ansible-home" ANSIBLE_LOCAL_TEMP="$1/local" ANSIBLE_REMOTE_TEMP="$1/remote"
    export ANSIBLE_NOCOLOR=1 ANSIBLE_RETRY_FILES_ENABLED=false ANSIBLE_LOCALHOST_WARNING=false
    export ANSIBLE_INVENTORY_UNPARSED_WARNING=false ANSIBLE_CONFIG="$1/ansible.cfg"
    : >"$ANSIBLE_CONFIG"
}
