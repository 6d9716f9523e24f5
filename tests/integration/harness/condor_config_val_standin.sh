#!/bin/sh
# Stand-in for HTCondor's condor_config_val (no HTCondor can be installed here): answers from
# ../condor/config (lines `KNOB = value`) as the real tool prints a local lookup: each defined
# value on its own stdout line; `Not defined: KNOB` on stderr for a knob that is not, then exit
# status 1. CREDMON_ALLOW_SPECIAL_CHAR_NAMES has a default (false), so it is always defined.
# Every call is recorded in ../condor/config_val_calls.
here=$(dirname "$0")/../condor
echo "$*" >> "$here/config_val_calls"
rc=0
for knob in "$@"; do
    upper=$(printf '%s' "$knob" | tr '[:lower:]' '[:upper:]')
    line=$(grep -i "^[[:space:]]*$knob[[:space:]]*=" "$here/config" 2>/dev/null | tail -n 1)
    if [ -n "$line" ]; then
        value=$(printf '%s' "${line#*=}" | sed 's/^[[:space:]]*//; s/[[:space:]]*$//')
    elif [ "$upper" = CREDMON_ALLOW_SPECIAL_CHAR_NAMES ]; then
        value=false
    else
        value=
    fi
    if [ -n "$value" ]; then
        printf '%s\n' "$value"
    else
        echo "Not defined: $upper" >&2
        rc=1
    fi
done
exit $rc
