/* Test helper for tests/attach_race.rs: container root racing the attach.
 *
 * Built by the test with `cc -static` and run inside a container as root:
 *   stopper OUT STOP
 * Until the file STOP exists: reads the PID namespace's last PID, sends
 * SIGSTOP to it and to the next one the moment it exists (so a new process
 * is stopped before its first instruction whenever the signal lands
 * first), each PID once, writes
 *   pid=P comm=COMM cg=CGROUP2PATH fds: N=TARGET ...
 * to OUT (TARGET prefixed with "DIR:" when the fd is a directory), and lets
 * it go on with SIGCONT. Ends with "iterations N". A shell cannot do this:
 * busybox `read` reads one byte at a time and sysctl files return EOF at any
 * offset but 0.
 */
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void read_line(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n = fd < 0 ? -1 : read(fd, buf, len - 1);
	if (fd >= 0)
		close(fd);
	buf[n > 0 ? n : 0] = 0;
	buf[strcspn(buf, "\n")] = 0;
}

static void record(FILE *out, int pid)
{
	char path[64], comm[64], cg[4096], target[4096], *line;
	struct dirent *e;
	struct stat st;
	DIR *d;

	snprintf(path, sizeof(path), "/proc/%d/comm", pid);
	read_line(path, comm, sizeof(comm));
	snprintf(path, sizeof(path), "/proc/%d/cgroup", pid);
	{
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		ssize_t n = fd < 0 ? -1 : read(fd, cg, sizeof(cg) - 1);
		if (fd >= 0)
			close(fd);
		cg[n > 0 ? n : 0] = 0;
	}
	line = strstr(cg, "0::");
	if (line) {
		line += 3;
		line[strcspn(line, "\n")] = 0;
	}
	fprintf(out, "pid=%d comm=%s cg=%s fds:", pid, comm, line ? line : "");
	snprintf(path, sizeof(path), "/proc/%d/fd", pid);
	d = opendir(path);
	while (d && (e = readdir(d))) {
		char fdpath[300];
		ssize_t n;
		if (e->d_name[0] == '.')
			continue;
		snprintf(fdpath, sizeof(fdpath), "/proc/%d/fd/%s", pid, e->d_name);
		n = readlink(fdpath, target, sizeof(target) - 1);
		target[n > 0 ? n : 0] = 0;
		fprintf(out, " %s=%s%s", e->d_name,
			stat(fdpath, &st) == 0 && S_ISDIR(st.st_mode) ? "DIR:" : "", target);
	}
	if (d)
		closedir(d);
	fprintf(out, "\n");
	fflush(out);
}

int main(int argc, char **argv)
{
	long iterations = 0;
	int handled = 1, self = getpid();
	char buf[32];
	FILE *out;
	int fd;

	if (argc != 3)
		return 2;
	out = fopen(argv[1], "w");
	fd = open("/proc/sys/kernel/ns_last_pid", O_RDONLY | O_CLOEXEC);
	if (!out || fd < 0)
		return 2;
	fflush(out);
	while (access(argv[2], F_OK) != 0) {
		ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
		int last, p;
		iterations++;
		if (n <= 0)
			continue;
		buf[n] = 0;
		last = atoi(buf);
		/* The newest process (created while this loop was not running)
		 * and the next one, each stopped once. */
		for (p = last; p <= last + 1; p++) {
			if (p > handled && p != self && kill(p, SIGSTOP) == 0) {
				record(out, p);
				kill(p, SIGCONT);
				handled = p;
			}
		}
	}
	fprintf(out, "iterations %ld\n", iterations);
	fclose(out);
	return 0;
}
