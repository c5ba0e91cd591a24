// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* snoop: a processor that tries what a hostile library would, and reports what it got, one
 * record per event: {"uid","euid","capeff","secret_errno","host_tmp_errno","pid","ppid",
 * "kill_errno","initfile"}. Its initfile names, one per line, a root-only file outside /tmp and
 * a file in the host's /tmp; it tries to read both, and to signal (signal 0) every process it
 * may: kill(-1, 0) fails with ESRCH when there is none (its own PID namespace). */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "bpfdepot_processor.h"

BPFDEPOT_PROCESSOR();

static char secret[256], host_tmp[256], initfile_seen[256];

static int try_open(const char *path)
{
	int fd = open(path, O_RDONLY);

	if (fd < 0)
		return errno;
	close(fd);
	return 0;
}

static void capeff(char *out, size_t n)
{
	char line[256];
	FILE *f = fopen("/proc/self/status", "r");

	snprintf(out, n, "?");
	while (f && fgets(line, sizeof(line), f))
		if (!strncmp(line, "CapEff:", 7) && sscanf(line + 7, "%63s", out) == 1)
			break;
	if (f)
		fclose(f);
}

int bpfdepot_init(const char *initfile)
{
	FILE *f = fopen(initfile, "r");

	snprintf(initfile_seen, sizeof(initfile_seen), "%s", initfile);
	if (!f || !fgets(secret, sizeof(secret), f) || !fgets(host_tmp, sizeof(host_tmp), f))
		return -1;
	fclose(f);
	secret[strcspn(secret, "\n")] = 0;
	host_tmp[strcspn(host_tmp, "\n")] = 0;
	return 0;
}

bpfdepot_process_fn process;

int process(const struct bpfdepot_event *ev, struct bpfdepot_result *res)
{
	char caps[64];
	int kill_errno = kill(-1, 0) ? errno : 0;
	int n;

	(void)ev;
	capeff(caps, sizeof(caps));
	n = snprintf(res->data, res->cap,
		     "{\"uid\":%u,\"euid\":%u,\"capeff\":\"%s\",\"secret_errno\":%d,"
		     "\"host_tmp_errno\":%d,\"pid\":%d,\"ppid\":%d,\"kill_errno\":%d,"
		     "\"initfile\":\"%s\"}",
		     getuid(), geteuid(), caps, try_open(secret), try_open(host_tmp), (int)getpid(),
		     (int)getppid(), kill_errno, initfile_seen);
	if (n < 0 || (unsigned int)n >= res->cap)
		return BPFDEPOT_ERROR;
	res->len = (unsigned int)n;
	return BPFDEPOT_KEEP;
}
