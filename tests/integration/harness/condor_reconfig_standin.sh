#!/bin/sh
# Stand-in for HTCondor's condor_reconfig (no HTCondor can be installed here): records that the
# daemons were told to re-read their configuration, and what config.d then held.
here=$(dirname "$0")/../condor
date +%s >> "$here/reconfigs"
