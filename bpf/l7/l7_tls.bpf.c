// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* l7_tls: HTTP/1, MongoDB and HTTP/2 in TLS connections, seen as plaintext in OpenSSL's
 * SSL_write / SSL_write_ex (at entry: buf and num are the bytes to encrypt) and SSL_read /
 * SSL_read_ex (the buffer holds the plaintext only when the call returns, so the entry saves buf
 * per thread and the return probe reads it). Python calls only the _ex forms (CATALOG §0.7),
 * openssl s_client / s_server only the plain ones, so all four are hooked.
 *
 * Detection, request/response pairing and the event are the syscall capture's own (l7_capture.h),
 * keyed by the SSL * (one per TLS connection) and marked tls = 1. The peer comes without any
 * OpenSSL struct offset (as Coroot's l7/openssl.c does it): the read() / recvfrom() a thread
 * makes inside SSL_read* names the socket's fd, whose struct sock gives the addresses; they are
 * kept per SSL * (ssl_peers), so a server's response written by SSL_write has them too. A call
 * before the first such read (a client's first request) is completed by its response's read,
 * which has them: every L7_CALL of a socket BIO carries its peer. SSL_free forgets the SSL *.
 * SEC("uprobe") without a target: the manifest (tls.yaml) names libssl.so.3 and each function.
 *
 * The process filter (bpfdepot run --unit/--cgroup/--pid) judges the caller of SSL_write* at
 * entry, and of SSL_read* at entry too (the label is kept with the saved buffer for the
 * return probe); the label goes into the event. */
#define BPFDEPOT_FILTER
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "bpfdepot.h"
#include "l7.h"
#include "l7_capture.h"

/* An SSL_read / SSL_read_ex in progress on a thread: where the plaintext will be. */
struct ssl_read_args {
	__u64 ssl;        /* SSL * (the connection key) */
	__u64 buf;        /* user buffer the plaintext is decrypted into */
	__u64 readbytes;  /* SSL_read_ex: size_t *readbytes (the count); 0 for SSL_read */
	__s64 fd;         /* the socket read inside the call (sys_enter_read/recvfrom); -1 none */
	__u32 label;      /* the process filter's, decided at entry */
	__u32 __pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, __u32);       /* thread id: a thread is in at most one SSL_read at a time */
	__type(value, struct ssl_read_args);
} ssl_reads SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);       /* SSL * */
	__type(value, struct l7_peer);
} ssl_peers SEC(".maps");


/* One verified copy of the capture for every hook: a global function is checked once with
 * unknown arguments, where inlining it would verify it again inside each program. */
__noinline int l7_tls_capture(__u64 ssl, __u32 dir, __u64 buf, __u64 size, __u32 label)
{
	struct l7_peer peer = {}, *known;

	if (!ssl || !buf || !size)
		return 0;
	known = bpf_map_lookup_elem(&ssl_peers, &ssl); /* NULL until a read inside SSL_read* */
	if (known)
		peer = *known;
	peer.label = label; /* an unknown peer stays family 0: no address, as NULL gave */
	l7_capture(ssl, dir == L7_EGRESS ? L7_EGRESS : L7_INGRESS, (const void *)buf, 0,
		   size > 0xffffffff ? 0xffffffff : (__u32)size, bpf_ktime_get_ns(), 1, &peer);
	return 0;
}

/* The one-tgid knob, then the process filter (label set when it passes). */
static __always_inline int traced(__u32 *label)
{
	if (targ_pid && (bpf_get_current_pid_tgid() >> 32) != targ_pid)
		return 0;
	return bpfdepot_monitored(label);
}

static __always_inline int write_entry(void *ssl, const void *buf, __u64 num)
{
	__u32 label;

	if (!traced(&label) || !ssl || (__s64)num <= 0)
		return 0;
	/* the request (or response) leaves now: its time is the entry's */
	return l7_tls_capture((__u64)ssl, L7_EGRESS, (__u64)buf, num, label);
}

static __always_inline int read_entry(void *ssl, void *buf, size_t *readbytes)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct ssl_read_args args = {
		.ssl = (__u64)ssl, .buf = (__u64)buf, .readbytes = (__u64)readbytes, .fd = -1,
	};

	if (!traced(&args.label) || !ssl)
		return 0;
	bpf_map_update_elem(&ssl_reads, &tid, &args, BPF_ANY);
	return 0;
}

/* At the return of a read: ``count`` plaintext bytes are in the saved buffer (0: none). */
static __always_inline int read_return(int ex, long ret)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct ssl_read_args *args = bpf_map_lookup_elem(&ssl_reads, &tid);
	__u64 count = 0;

	if (!args)
		return 0;
	if (ex) {
		/* SSL_read_ex returns 1 on success and stores the count in *readbytes */
		if (ret == 1 && bpf_probe_read_user(&count, sizeof(count), (void *)args->readbytes))
			count = 0;
	} else if (ret > 0) {
		count = ret;
	}
	/* before the capture: the key is the thread, and the args are copied into the call */
	__u64 ssl = args->ssl, buf = args->buf;
	__s64 fd = args->fd;
	__u32 label = args->label;
	bpf_map_delete_elem(&ssl_reads, &tid);
	if (fd >= 0) {
		struct l7_peer peer = {};

		if (l7_fd_peer(fd, &peer) > 0 && peer.family)
			bpf_map_update_elem(&ssl_peers, &ssl, &peer, BPF_ANY);
	}
	if (count)
		l7_tls_capture(ssl, L7_INGRESS, buf, count, label);
	return 0;
}

/* int SSL_write(SSL *ssl, const void *buf, int num) */
SEC("uprobe")
int BPF_KPROBE(ssl_write, void *ssl, const void *buf, int num)
{
	return write_entry(ssl, buf, num > 0 ? num : 0);
}

/* int SSL_write_ex(SSL *s, const void *buf, size_t num, size_t *written) */
SEC("uprobe")
int BPF_KPROBE(ssl_write_ex, void *ssl, const void *buf, size_t num)
{
	return write_entry(ssl, buf, num);
}

/* int SSL_read(SSL *ssl, void *buf, int num) */
SEC("uprobe")
int BPF_KPROBE(ssl_read, void *ssl, void *buf)
{
	return read_entry(ssl, buf, NULL);
}

SEC("uretprobe")
int BPF_KRETPROBE(ssl_read_ret, int ret)
{
	return read_return(0, ret);
}

/* int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes) */
SEC("uprobe")
int BPF_KPROBE(ssl_read_ex, void *ssl, void *buf, size_t num, size_t *readbytes)
{
	return read_entry(ssl, buf, readbytes);
}

SEC("uretprobe")
int BPF_KRETPROBE(ssl_read_ex_ret, int ret)
{
	return read_return(1, ret);
}

/* void SSL_free(SSL *ssl): the address may be reused by the next SSL * */
SEC("uprobe")
int BPF_KPROBE(ssl_free, void *ssl)
{
	__u64 key = (__u64)ssl;

	l7_forget(key);
	bpf_map_delete_elem(&ssl_peers, &key);
	return 0;
}

/* read() and recv() (recvfrom) inside an SSL_read*: the fd under the SSL's socket BIO. */
static __always_inline int inner_read(struct l7_sys_enter *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct ssl_read_args *args = bpf_map_lookup_elem(&ssl_reads, &tid);

	if (args)
		args->fd = (__u32)ctx->args[0];
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_read")
int ssl_inner_read(struct l7_sys_enter *ctx)
{
	return inner_read(ctx);
}

SEC("tracepoint/syscalls/sys_enter_recvfrom")
int ssl_inner_recv(struct l7_sys_enter *ctx)
{
	return inner_read(ctx);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
