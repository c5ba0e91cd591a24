// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* echo: {"seq":S,"pid":P,"n":N,"worker":W} per event: N counts this worker's calls and W is
 * the worker's pid as the loader knows it ($BPFDEPOT_WORKER_PID: in its own PID namespace its
 * pid is 1), so a test sees which worker handled which event. With -DCRASH_AT=K it
 * dereferences NULL on its K-th call; with -DHANG_AT=K it never returns from it; with
 * -DGARBAGE_AT=K it writes garbage into the host's result pipe on its K-th call. exited() is
 * the function of a second channel: {"exited":P,"code":C,"channel":"...","worker":W}. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "bpfdepot_processor.h"
#include "procs.h"

BPFDEPOT_PROCESSOR();

static unsigned long calls;

/* The worker as the loader knows it: its own pid is 1 in the PID namespace it runs in. */
static int worker(void)
{
	const char *pid = getenv("BPFDEPOT_WORKER_PID");

	return pid ? atoi(pid) : (int)getpid();
}

#ifdef GARBAGE_AT
#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>

/* The host's result pipe: the one pipe besides stdout and stderr open for writing here
 * (its input pipe is open for reading, the progress page is a memfd); -1 unless exactly one. */
static int result_pipe(void)
{
	DIR *dir = opendir("/proc/self/fd");
	struct dirent *de;
	int found = -1, n = 0;

	if (!dir)
		return -1;
	while ((de = readdir(dir))) {
		int fd = atoi(de->d_name);
		struct stat st;

		if (fd <= 2 || fd == dirfd(dir) || fstat(fd, &st) || !S_ISFIFO(st.st_mode))
			continue;
		if ((fcntl(fd, F_GETFL) & O_ACCMODE) == O_WRONLY) {
			found = fd;
			n++;
		}
	}
	closedir(dir);
	return n == 1 ? found : -1;
}
#endif

int bpfdepot_init(const char *initfile)
{
	(void)initfile;
	return 0;
}

bpfdepot_process_fn process;

int process(const struct bpfdepot_event *ev, struct bpfdepot_result *res)
{
	struct procs_event e;
	int n;

	if (ev->size < sizeof(e))
		return BPFDEPOT_ERROR;
	memcpy(&e, ev->data, sizeof(e));
	calls++;
#ifdef CRASH_AT
	if (calls == CRASH_AT)
		*(volatile int *)0 = 1;
#endif
#ifdef HANG_AT
	while (calls == HANG_AT)
		;
#endif
#ifdef GARBAGE_AT
	/* once per run: the worker that takes over gets event GARBAGE_AT - 1 on another call */
	if (calls == GARBAGE_AT && e.seq == GARBAGE_AT - 1) {
		static const char junk[] = "not a frame: garbage from the processor\n";
		int fd = result_pipe();

		if (fd < 0 || write(fd, junk, sizeof(junk) - 1) != (ssize_t)(sizeof(junk) - 1))
			return BPFDEPOT_ERROR; /* shows as an error in the counts: the test fails */
	}
#endif
	n = snprintf(res->data, res->cap, "{\"seq\":%llu,\"pid\":%u,\"n\":%lu,\"worker\":%d}",
		     (unsigned long long)e.seq, e.pid, calls, worker());
	if (n < 0 || (unsigned int)n >= res->cap)
		return BPFDEPOT_ERROR;
	res->len = (unsigned int)n;
	return e.seq % 10 == 5 ? BPFDEPOT_DROP : BPFDEPOT_KEEP;
}

bpfdepot_process_fn exited;

int exited(const struct bpfdepot_event *ev, struct bpfdepot_result *res)
{
	struct exits_event e;
	int n;

	if (ev->size < sizeof(e))
		return BPFDEPOT_ERROR;
	memcpy(&e, ev->data, sizeof(e));
	n = snprintf(res->data, res->cap, "{\"exited\":%u,\"code\":%u,\"channel\":\"%s\",\"worker\":%d}",
		     e.pid, e.code, ev->channel, worker());
	if (n < 0 || (unsigned int)n >= res->cap)
		return BPFDEPOT_ERROR;
	res->len = (unsigned int)n;
	return BPFDEPOT_KEEP;
}
