#!/bin/sh
# TEST_SSH_SSH for OpenSSH's regression tests (tests/ext_openssh_regress.rs).
# The tests run `ssh -F $OBJ/ssh_proxy HOST CMD`, whose ProxyCommand starts
# $SSHD (sshd.sh beside this file), which relays to the gateway. Options on
# the command line win over the config file: log in as the test's
# login@container with its bound key, and accept the gateway's host key.
exec ssh -o User="$PORTCULLIS_EXT_USER" \
  -o IdentityFile="$PORTCULLIS_EXT_KEY" -o IdentitiesOnly=yes \
  -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
  -o GlobalKnownHostsFile=/dev/null -o BatchMode=yes "$@"
