#!/bin/sh
# TEST_SSH_SFTPSERVER for OpenSSH's regression tests (tests/ext_openssh_regress.rs).
# `sftp -D` runs this as its "local" server; it opens the sftp subsystem
# through the Portcullis gateway instead, so the tests talk to the gateway's
# built-in SFTP server inside the test container.
# PORTCULLIS_EXT_PORT, _USER (login@container) and _KEY (a key bound to a
# principal) come from the test.
exec ssh -F /dev/null -p "$PORTCULLIS_EXT_PORT" \
  -o BatchMode=yes -o LogLevel=ERROR \
  -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
  -o IdentitiesOnly=yes -i "$PORTCULLIS_EXT_KEY" \
  -l "$PORTCULLIS_EXT_USER" -s 127.0.0.1 sftp
