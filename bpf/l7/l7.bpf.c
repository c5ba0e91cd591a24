// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* l7: HTTP/1, MongoDB, DNS and HTTP/2 calls of every process, from syscall tracepoints alone
 * (no kprobe, no uprobe): the read and write families on sockets. sys_enter_* keeps the fd and
 * the buffer (or iovec, msghdr, mmsghdr) per thread, sys_exit_* hands the bytes the call moved
 * to l7_capture() (l7_capture.h), which detects, pairs and sends l7_event. Whether an fd is a
 * socket, and its peer, is read once per (tgid, fd) from the task's file table with CO-RE and
 * cached in l7_socks until close().
 *
 * The process filter (bpfdepot run --unit/--cgroup/--pid) judges each call at its entry, in
 * the calling process (bpfdepot_monitored): a call outside is not kept for its exit, so it
 * neither completes nor starts a pair; the label goes to the exit with the call's arguments
 * and into the event. */
#define BPFDEPOT_FILTER
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "bpfdepot.h"
#include "l7.h"
#include "l7_capture.h"


/* What the entry of a call left for its exit, per thread. */
struct l7_args {
	__u64 buf;    /* the buffer, or the iovec array when iovcnt > 0 */
	__u64 addr;   /* struct sockaddr * of sendto/recvfrom/msg_name; 0 none */
	__u64 mmsg;   /* sendmmsg/recvmmsg: the first struct mmsghdr (its msg_len is the size) */
	__u64 ts;     /* entry time */
	__u32 fd;
	__u32 iovcnt;
	__u32 label;  /* the process filter's, decided at entry */
	__u8 dir;     /* enum l7_dir */
	__u8 __pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, __u64); /* pid_tgid */
	__type(value, struct l7_args);
} l7_active SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64); /* tgid << 32 | fd */
	__type(value, struct l7_peer);
} l7_socks SEC(".maps");

/* The fd's socket and peer, from the cache or the current task's file table. Unconnected UDP
 * has no peer yet: each call's sockaddr gives it. */
static __always_inline struct l7_peer *l7_sock(__u64 key, __u32 fd)
{
	struct l7_peer *cached = bpf_map_lookup_elem(&l7_socks, &key);
	struct l7_peer p = {};

	if (cached)
		return cached;
	/* another file is cached too (is_sock 0), so it is not looked up again; an fd not open
	 * is not: a later open of that number may be a socket */
	if (l7_fd_peer(fd, &p) < 0)
		return NULL;
	bpf_map_update_elem(&l7_socks, &key, &p, BPF_ANY);
	return bpf_map_lookup_elem(&l7_socks, &key);
}

static __always_inline void l7_enter(__u32 fd, __u64 buf, __u32 iovcnt, __u64 addr, __u64 mmsg,
				     __u8 dir)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	struct l7_peer *p;
	struct l7_args a = {};

	if (targ_pid && tgid != targ_pid)
		return;
	if (!bpfdepot_monitored(&a.label))
		return;
	p = l7_sock((__u64)tgid << 32 | fd, fd);
	if (!p || !p->is_sock || !buf)
		return;
	a.buf = buf;
	a.addr = addr;
	a.mmsg = mmsg;
	a.ts = bpf_ktime_get_ns();
	a.fd = fd;
	a.iovcnt = iovcnt;
	a.dir = dir;
	bpf_map_update_elem(&l7_active, &id, &a, BPF_ANY);
}

/* sendmsg/recvmsg and the first message of sendmmsg/recvmmsg: the iovecs and msg_name. */
static __always_inline void l7_enter_msg(__u32 fd, __u64 msg, __u64 mmsg, __u8 dir)
{
	struct user_msghdr m;

	if (bpf_probe_read_user(&m, sizeof(m), (void *)msg))
		return;
	l7_enter(fd, (__u64)m.msg_iov, m.msg_iovlen ? m.msg_iovlen : 0, (__u64)m.msg_name, mmsg, dir);
}

/* The peer of an unconnected UDP socket: the call's sockaddr. */
static __always_inline void l7_peer_from(struct l7_peer *p, __u64 addr)
{
	struct sockaddr_in6 sa = {};

	if (!addr || bpf_probe_read_user(&sa, sizeof(sa), (void *)addr))
		return;
	if (sa.sin6_family == AF_INET) {
		struct sockaddr_in *in = (void *)&sa;

		p->family = AF_INET;
		p->rport = bpf_ntohs(in->sin_port);
		__builtin_memcpy(p->raddr, &in->sin_addr, 4);
	} else if (sa.sin6_family == AF_INET6) {
		p->family = AF_INET6;
		p->rport = bpf_ntohs(sa.sin6_port);
		__builtin_memcpy(p->raddr, &sa.sin6_addr, 16);
	}
}

static __always_inline void l7_exit(__s64 ret)
{
	__u64 id = bpf_get_current_pid_tgid(), key, now;
	struct l7_peer peer, *p;
	struct l7_args *a;
	__u32 size = ret;

	a = bpf_map_lookup_elem(&l7_active, &id);
	if (!a)
		return;
	if (ret <= 0)
		goto out;
	if (a->mmsg) {
		/* the count of messages: the first one's bytes are its mmsghdr.msg_len */
		if (bpf_probe_read_user(&size, sizeof(size),
					(void *)(a->mmsg + offsetof(struct mmsghdr, msg_len))))
			goto out;
	}
	key = (id & 0xffffffff00000000ULL) | a->fd;
	p = bpf_map_lookup_elem(&l7_socks, &key);
	if (!p)
		goto out;
	peer = *p;
	peer.label = a->label;
	if (peer.udp && !peer.rport)
		l7_peer_from(&peer, a->addr);
	now = bpf_ktime_get_ns();
	l7_capture(key, a->dir, (const void *)a->buf, a->iovcnt, size,
		   a->dir == L7_EGRESS ? a->ts : now, 0, &peer);
out:
	bpf_map_delete_elem(&l7_active, &id);
}

#define ARG(i) ((__u64)ctx->args[i])

SEC("tracepoint/syscalls/sys_enter_read")
int enter_read(struct l7_sys_enter *ctx) { l7_enter(ARG(0), ARG(1), 0, 0, 0, L7_INGRESS); return 0; }
SEC("tracepoint/syscalls/sys_enter_write")
int enter_write(struct l7_sys_enter *ctx) { l7_enter(ARG(0), ARG(1), 0, 0, 0, L7_EGRESS); return 0; }
SEC("tracepoint/syscalls/sys_enter_readv")
int enter_readv(struct l7_sys_enter *ctx) { l7_enter(ARG(0), ARG(1), ARG(2), 0, 0, L7_INGRESS); return 0; }
SEC("tracepoint/syscalls/sys_enter_writev")
int enter_writev(struct l7_sys_enter *ctx) { l7_enter(ARG(0), ARG(1), ARG(2), 0, 0, L7_EGRESS); return 0; }
SEC("tracepoint/syscalls/sys_enter_recvfrom")
int enter_recvfrom(struct l7_sys_enter *ctx) { l7_enter(ARG(0), ARG(1), 0, ARG(4), 0, L7_INGRESS); return 0; }
SEC("tracepoint/syscalls/sys_enter_sendto")
int enter_sendto(struct l7_sys_enter *ctx) { l7_enter(ARG(0), ARG(1), 0, ARG(4), 0, L7_EGRESS); return 0; }
SEC("tracepoint/syscalls/sys_enter_recvmsg")
int enter_recvmsg(struct l7_sys_enter *ctx) { l7_enter_msg(ARG(0), ARG(1), 0, L7_INGRESS); return 0; }
SEC("tracepoint/syscalls/sys_enter_sendmsg")
int enter_sendmsg(struct l7_sys_enter *ctx) { l7_enter_msg(ARG(0), ARG(1), 0, L7_EGRESS); return 0; }
SEC("tracepoint/syscalls/sys_enter_recvmmsg")
int enter_recvmmsg(struct l7_sys_enter *ctx) { l7_enter_msg(ARG(0), ARG(1), ARG(1), L7_INGRESS); return 0; }
SEC("tracepoint/syscalls/sys_enter_sendmmsg")
int enter_sendmmsg(struct l7_sys_enter *ctx) { l7_enter_msg(ARG(0), ARG(1), ARG(1), L7_EGRESS); return 0; }

/* The capture, once: every exit program tail-calls this one, so the verifier checks the
 * capture a single time instead of once per syscall (it is most of the object; ten copies took
 * seconds to load). Its bare section names no tracepoint: the loader loads it, attaches nothing,
 * and the prog array below reaches it. */
SEC("tracepoint")
int l7_exit_capture(struct l7_sys_exit *ctx)
{
	l7_exit(ctx->ret);
	return 0;
}

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, int(struct l7_sys_exit *));
} l7_tail SEC(".maps") = {
	.values = {[0] = (void *)&l7_exit_capture},
};

/* One exit program per syscall (a tracepoint program attaches to one tracepoint). The tail call
 * cannot fail here (libbpf fills the array at load); if it did, the thread's entry in l7_active
 * would wait for its next call to replace it. */
#define L7_EXIT(name)                                                    \
	SEC("tracepoint/syscalls/sys_exit_" #name)                       \
	int exit_##name(struct l7_sys_exit *ctx)                          \
	{                                                                \
		bpf_tail_call(ctx, &l7_tail, 0);                         \
		return 0;                                                \
	}

L7_EXIT(read)
L7_EXIT(write)
L7_EXIT(readv)
L7_EXIT(writev)
L7_EXIT(recvfrom)
L7_EXIT(sendto)
L7_EXIT(recvmsg)
L7_EXIT(sendmsg)
L7_EXIT(recvmmsg)
L7_EXIT(sendmmsg)

/* close(): the fd may be reused for another file or peer. */
SEC("tracepoint/syscalls/sys_enter_close")
int enter_close(struct l7_sys_enter *ctx)
{
	__u64 key = (bpf_get_current_pid_tgid() & 0xffffffff00000000ULL) | (__u32)ARG(0);

	if (targ_pid && (key >> 32) != targ_pid)
		return 0;
	bpf_map_delete_elem(&l7_socks, &key);
	l7_forget(key);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
