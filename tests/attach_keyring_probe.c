/* Test probe for tests/attach_isolation.rs (busybox has no keyctl).
 *
 * Built by the test with `cc -static` and copied into the containers.
 *   probe show        -> "ses SERIAL DESCRIPTION" for the session keyring
 *   probe find NAME   -> "find NAME SERIAL" or "find NAME absent"
 *   probe add NAME    -> adds a "user" key NAME (payload "hi") to @s
 *   probe operator NAME CMD...
 *                     -> joins a new session keyring NAME, adds the "user"
 *                        key "hostsecret" (payload "s3cr3t") to it, prints
 *                        "operator SERIAL" and execs CMD (an operator's
 *                        login session with a secret in its keyring)
 * Exit status 0, or 2 on a usage or unexpected error.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define KEY_SPEC_SESSION_KEYRING -3
#define KEYCTL_GET_KEYRING_ID 0
#define KEYCTL_JOIN_SESSION_KEYRING 1
#define KEYCTL_DESCRIBE 6
#define KEYCTL_SEARCH 10

int main(int argc, char **argv)
{
	char desc[512];
	long serial, n;

	if (argc == 2 && strcmp(argv[1], "show") == 0) {
		serial = syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0);
		if (serial < 0) {
			printf("ses none %s\n", strerror(errno));
			return 0;
		}
		n = syscall(SYS_keyctl, KEYCTL_DESCRIBE, serial, desc, sizeof(desc) - 1);
		if (n < 0)
			snprintf(desc, sizeof(desc), "undescribable:%s", strerror(errno));
		else
			desc[n < (long)sizeof(desc) ? n : (long)sizeof(desc) - 1] = 0;
		printf("ses %ld %s\n", serial, desc);
		return 0;
	}
	if (argc == 3 && strcmp(argv[1], "find") == 0) {
		serial = syscall(SYS_keyctl, KEYCTL_SEARCH, KEY_SPEC_SESSION_KEYRING, "user",
				 argv[2], 0);
		if (serial < 0)
			printf("find %s absent\n", argv[2]);
		else
			printf("find %s %ld\n", argv[2], serial);
		return 0;
	}
	if (argc == 3 && strcmp(argv[1], "add") == 0) {
		serial = syscall(SYS_add_key, "user", argv[2], "hi", 2, KEY_SPEC_SESSION_KEYRING);
		if (serial < 0) {
			printf("add %s failed %s\n", argv[2], strerror(errno));
			return 2;
		}
		printf("add %s %ld\n", argv[2], serial);
		return 0;
	}
	if (argc >= 4 && strcmp(argv[1], "operator") == 0) {
		serial = syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, argv[2]);
		if (serial < 0 ||
		    syscall(SYS_add_key, "user", "hostsecret", "s3cr3t", 6, KEY_SPEC_SESSION_KEYRING) < 0) {
			perror("operator keyring");
			return 2;
		}
		printf("operator %ld\n", serial);
		fflush(stdout);
		execvp(argv[3], argv + 3);
		perror("exec");
		return 2;
	}
	fprintf(stderr, "usage: probe show | find NAME | add NAME\n");
	return 2;
}
