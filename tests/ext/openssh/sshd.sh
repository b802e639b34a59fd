#!/bin/sh
# TEST_SSH_SSHD for OpenSSH's regression tests (tests/ext_openssh_regress.rs).
# Not an sshd: `-t` (the config check test-exec.sh makes) succeeds, and `-i`
# (inetd mode, the tests' ProxyCommand) relays stdin/stdout to the Portcullis
# gateway with the regression suite's own netcat ($PORTCULLIS_EXT_NETCAT).
for a in "$@"; do
  case "$a" in
    -t) exit 0 ;;
    -i) exec "$PORTCULLIS_EXT_NETCAT" 127.0.0.1 "$PORTCULLIS_EXT_PORT" ;;
  esac
done
echo "portcullis test sshd: only -t and -i are supported ($*)" >&2
exit 1
