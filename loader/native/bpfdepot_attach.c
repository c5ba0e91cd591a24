/* bpfdepot_attach.c: perf events per CPU and uprobes by function name (see bpfdepot_attach.h). */
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <linux/perf_event.h>
#include <bpf/libbpf.h>

#include "bpfdepot_attach.h"

int bpfdepot_perf_event_open(uint32_t type, uint64_t config, uint64_t sample, int freq, int cpu)
{
	struct perf_event_attr attr;
	int fd;

	memset(&attr, 0, sizeof(attr));
	attr.size = sizeof(attr);
	attr.type = type;
	attr.config = config;
	attr.freq = freq ? 1 : 0;
	if (freq)
		attr.sample_freq = sample;
	else
		attr.sample_period = sample;
	/* pid -1 + cpu: every task on that CPU (as libbpf-tools' profile does) */
	fd = syscall(__NR_perf_event_open, &attr, -1, cpu, -1, PERF_FLAG_FD_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

struct bpf_link *bpfdepot_attach_uprobe(const struct bpf_program *prog, int pid, const char *binary,
					const char *func_name, size_t offset, bool retprobe)
{
	LIBBPF_OPTS(bpf_uprobe_opts, opts, .retprobe = retprobe, .func_name = func_name);

	return bpf_program__attach_uprobe_opts(prog, pid, binary, offset, &opts);
}
