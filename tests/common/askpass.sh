#!/bin/sh
# SSH_ASKPASS program for the integration tests (OpenSSH runs it once per
# keyboard-interactive prompt, with the prompt text as $1).
#
# - The gateway's first prompt mentions "token": answer $PORTCULLIS_TEST_TOKEN
#   (empty means "log in with the browser").
# - Any other prompt (the device-flow prompt with the URL and code) is written
#   to $PORTCULLIS_TEST_DIR/prompt.N; the test drives the browser login and
#   writes the answer to $PORTCULLIS_TEST_DIR/answer.N, which is printed.
case "$1" in
  *token*) printf '%s\n' "$PORTCULLIS_TEST_TOKEN"; exit 0 ;;
esac
dir=${PORTCULLIS_TEST_DIR:?}
n=$(date +%s%N)
printf '%s' "$1" > "$dir/prompt.$n.tmp" && mv "$dir/prompt.$n.tmp" "$dir/prompt.$n"
i=0
while [ ! -e "$dir/answer.$n" ]; do
  sleep 0.1
  i=$((i + 1))
  [ "$i" -gt 1200 ] && exit 1
done
cat "$dir/answer.$n"
