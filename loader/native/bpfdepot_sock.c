/* bpfdepot_sock.c: iterator attach with parameters, and link/program ids.
 *
 * The options struct and union bpf_iter_link_info are libbpf's and the kernel's; declaring
 * them to cffi would clash with their headers in tests/build/test_native.py, so the few lines
 * that fill them live here. */
#include <errno.h>
#include <string.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include "bpfdepot_sock.h"

struct bpf_link *bpfdepot_attach_iter(const struct bpf_program *prog, int map_fd, uint32_t tid,
				      uint32_t pid)
{
	union bpf_iter_link_info info;
	LIBBPF_OPTS(bpf_iter_attach_opts, opts);

	if (map_fd <= 0 && !tid && !pid)
		return bpf_program__attach_iter(prog, NULL);
	memset(&info, 0, sizeof(info));
	if (map_fd > 0)
		info.map.map_fd = map_fd;
	else if (tid)
		info.task.tid = tid;
	else
		info.task.pid = pid;
	opts.link_info = &info;
	opts.link_info_len = sizeof(info);
	return bpf_program__attach_iter(prog, &opts);
}

uint32_t bpfdepot_link_prog_id(int link_fd)
{
	struct bpf_link_info info;
	uint32_t len = sizeof(info);

	memset(&info, 0, sizeof(info));
	if (bpf_obj_get_info_by_fd(link_fd, &info, &len))
		return 0;
	return info.prog_id;
}

uint32_t bpfdepot_prog_id(int prog_fd)
{
	struct bpf_prog_info info;
	uint32_t len = sizeof(info);

	memset(&info, 0, sizeof(info));
	if (bpf_obj_get_info_by_fd(prog_fd, &info, &len))
		return 0;
	return info.id;
}
