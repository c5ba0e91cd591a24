// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* filelat: latency of file reads, writes and syncs, from the syscall tracepoints
 * (read, write, pread64, pwrite64, readv, writev, fsync, fdatasync), as a log2 histogram of
 * microseconds per {op, file type, filesystem, device}, plus one event per call slower than
 * min_us with the caller, the byte count and the file's name.
 *
 * libbpf-tools fsslower/fsdist hook the filesystems' own functions with fentry or kprobes,
 * which this fleet lacks; syscall tracepoints exist on every target (CONFIG_FTRACE_SYSCALLS).
 * The entry resolves the fd to its struct file through current->files (CO-RE reads), keeps
 * regular files (sockets, pipes, FIFOs and devices too with all_types) and stashes the start
 * time in the thread's task storage; the exit adds the latency to the histogram.
 *
 * Under the process filter (bpfdepot run --unit/--cgroup/--pid) the entry decides, for the
 * histogram and the event alike, and the event carries the label of what matched.
 */
#define BPFDEPOT_FILTER /* honours bpfdepot run --unit/--cgroup/--pid: the caller's */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "bits.bpf.h"
#include "bpfdepot.h"
#include "filelat.h"

/* File type bits of i_mode: macros in the kernel, so vmlinux.h lacks them. */
#define S_IFMT   0170000
#define S_IFSOCK 0140000
#define S_IFLNK  0120000
#define S_IFREG  0100000
#define S_IFBLK  0060000
#define S_IFDIR  0040000
#define S_IFCHR  0020000
#define S_IFIFO  0010000

#define MINORBITS 20 /* the kernel's dev_t: major << 20 | minor (include/linux/kdev_t.h) */

const volatile __u32 targ_pid = 0;      /* only this process (tgid); 0: every process */
const volatile __u64 min_us = 10000;    /* slow-operation events for calls this long or longer */
const volatile bool all_types = false;  /* true: sockets, pipes, FIFOs, devices too */

enum filelat_ftype {
	FILELAT_REGULAR, FILELAT_FIFO, FILELAT_SOCKET, FILELAT_CHAR, FILELAT_BLOCK, FILELAT_DIR,
	FILELAT_LINK, FILELAT_UNKNOWN,
};

/* The names the key and events carry, by enum filelat_ftype; 8 bytes each, NUL-padded. */
static const char ftype_names[][8] = {
	"regular", "fifo", "socket", "char", "block", "dir", "link", "unknown",
};

/* Syscall tracepoint records, as their tracefs format files lay them out (the same on every
 * target). Not in vmlinux.h: syscall events are not BTF-described. Each argument takes 8
 * bytes whatever its C type. */
struct filelat_sys_enter {
	__u64 common;           /* common_type, flags, preempt_count, pid */
	__s32 syscall_nr;
	__u32 __pad;
	__u64 fd;               /* args[0]: unsigned int fd for every traced call */
};

struct filelat_sys_exit {
	__u64 common;
	__s32 syscall_nr;
	__u32 __pad;
	__s64 ret;
};

/* What the entry leaves for the exit of the same thread, and the filesystem of the thread's
 * last call: a thread mostly works on one filesystem, so the exit reads the type's name only
 * when the superblock (or its device) changed. */
struct start {
	__u64 ts;               /* bpf_ktime_get_ns() at entry */
	struct file *file;      /* the fd's file at entry: the call holds a reference to it */
	struct inode *inode;
	__s32 fd;
	__u32 ftype;            /* enum filelat_ftype */
	struct super_block *sb; /* the last call's superblock, */
	__u32 dev;              /* its s_dev */
	__u32 label;            /* the filter's verdict at entry, for the event */
	char fs[16];            /* and its type's name */
};

/* Per thread (a thread is in one syscall at a time). Task storage rather than a hash keyed by
 * tid: no hashing, no size to guess, nothing to delete, freed with the thread (tracing
 * programs have it since 5.12, commit a10787e6d58c). ts 0: no measured call in flight. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct start);
} start SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct filelat_hist_key);
	__type(value, struct filelat_hist);
} filelat_hists SEC(".maps");

/* Calls not measured because filelat_hists was full or the thread's `start` could not be
 * made (out of memory, or the storage busy on this CPU): the loader shows them as the
 * histogram channel's lost. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} filelat_hists_lost SEC(".maps");

BPFDEPOT_CHANNEL(filelat_events, struct filelat_event, 256 * 1024);

static struct filelat_hist zero_hist; /* .bss: the value a new key's histogram starts from */

static __always_inline void count_lost(void)
{
	__u32 zero = 0;
	__u64 *lost = bpf_map_lookup_elem(&filelat_hists_lost, &zero);

	if (lost)
		*lost += 1; /* per-CPU slot: no atomic needed */
}

static __always_inline __u32 ftype_of(__u16 mode)
{
	switch (mode & S_IFMT) {
	case S_IFREG:  return FILELAT_REGULAR;
	case S_IFIFO:  return FILELAT_FIFO;
	case S_IFSOCK: return FILELAT_SOCKET;
	case S_IFCHR:  return FILELAT_CHAR;
	case S_IFBLK:  return FILELAT_BLOCK;
	case S_IFDIR:  return FILELAT_DIR;
	case S_IFLNK:  return FILELAT_LINK;
	default:       return FILELAT_UNKNOWN;
	}
}

/* current->files->fdt->fd[fd], or NULL for an fd that is not open (the call fails EBADF).
 * task, files and fdt are BTF pointers, read by direct (fault-safe) loads, cheaper than a
 * helper call each; fd[] is an array of pointers, which BTF loads give as plain numbers. */
static __always_inline struct file *fd_file(__u64 fd)
{
	struct fdtable *fdt = bpf_get_current_task_btf()->files->fdt;
	struct file *file = NULL;

	if (fd >= fdt->max_fds)
		return NULL;
	bpf_probe_read_kernel(&file, sizeof(file), &fdt->fd[fd]);
	return file;
}

static __always_inline int on_enter(struct filelat_sys_enter *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct inode *inode;
	struct file *file;
	struct start *s;
	__u32 ftype, label;

	if (targ_pid && (id >> 32) != targ_pid)
		return 0;
	if (!bpfdepot_monitored(&label))
		return 0;
	file = fd_file(ctx->fd);
	if (!file)
		return 0;
	inode = BPF_CORE_READ(file, f_inode);
	ftype = ftype_of(BPF_CORE_READ(inode, i_mode));
	if (ftype != FILELAT_REGULAR && !all_types)
		return 0;
	s = bpf_task_storage_get(&start, bpf_get_current_task_btf(), 0,
				 BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!s) {
		count_lost();
		return 0;
	}
	s->file = file;
	s->inode = inode;
	s->fd = (__s32)ctx->fd;
	s->ftype = ftype;
	s->label = label;
	s->ts = bpf_ktime_get_ns();
	return 0;
}

/* The filesystem of the call's inode into the key: its type's name and device, read again
 * only when they differ from the thread's last call. */
static __always_inline void fs_of(struct start *s, struct filelat_hist_key *key)
{
	struct inode *inode = s->inode; /* a plain load: struct start is ours, not the kernel's */
	struct super_block *sb = BPF_CORE_READ(inode, i_sb);
	__u32 dev = BPF_CORE_READ(sb, s_dev);

	if (sb != s->sb || dev != s->dev) {
		bpf_probe_read_kernel_str(s->fs, sizeof(s->fs), BPF_CORE_READ(sb, s_type, name));
		s->sb = sb;
		s->dev = dev;
	}
	__builtin_memcpy(key->fs, s->fs, sizeof(key->fs));
	key->dev_major = dev >> MINORBITS;
	key->dev_minor = dev & ((1U << MINORBITS) - 1);
}

static __always_inline void emit(const struct start *s, const struct filelat_hist_key *key,
				 __u64 id, __u64 latency_us, __s64 ret)
{
	struct file *file = s->file; /* a plain load: struct start is ours, not the kernel's */
	struct filelat_event *e;
	const unsigned char *name;

	e = bpfdepot_reserve(filelat_events);
	if (!e)
		return;
	e->latency_us = latency_us;
	e->bytes = ret;
	e->pid = id >> 32;
	e->tid = (__u32)id;
	e->fd = s->fd;
	e->label = s->label;
	e->dev_major = key->dev_major;
	e->dev_minor = key->dev_minor;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	__builtin_memcpy(e->op, key->op, sizeof(e->op));
	__builtin_memcpy(e->ftype, key->ftype, sizeof(e->ftype));
	__builtin_memcpy(e->fs, key->fs, sizeof(e->fs));
	/* f_path sits in an anonymous union on 6.18 (with __f_path); CO-RE finds it either way. */
	name = BPF_CORE_READ(file, f_path.dentry, d_name.name);
	/* ring memory is not zeroed: clear the whole name, the helper writes only up to the NUL */
	__builtin_memset(e->file, 0, sizeof(e->file));
	bpf_probe_read_kernel_str(e->file, sizeof(e->file), name);
	bpfdepot_submit(filelat_events, e);
}

static __always_inline int on_exit(struct filelat_sys_exit *ctx, struct filelat_hist_key *key)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct filelat_hist *h;
	__u64 delta_us;
	__u32 slot, ft;
	struct start *s;

	s = bpf_task_storage_get(&start, bpf_get_current_task_btf(), 0, 0);
	if (!s || !s->ts)
		return 0; /* entered before attach, or filtered out */
	delta_us = (bpf_ktime_get_ns() - s->ts) / 1000;
	s->ts = 0;
	ft = s->ftype;
	if (ft > FILELAT_UNKNOWN)
		ft = FILELAT_UNKNOWN; /* bounds the table index for the verifier */
	__builtin_memcpy(key->ftype, ftype_names[ft], sizeof(key->ftype));
	fs_of(s, key);

	slot = log2_u64(delta_us);
	if (slot >= FILELAT_SLOTS)
		slot = FILELAT_SLOTS - 1;
	h = bpf_map_lookup_elem(&filelat_hists, key);
	if (!h) {
		bpf_map_update_elem(&filelat_hists, key, &zero_hist, BPF_NOEXIST);
		h = bpf_map_lookup_elem(&filelat_hists, key);
	}
	if (h) {
		__sync_fetch_and_add(&h->slots[slot], 1);
		__sync_fetch_and_add(&h->sum, delta_us);
	} else {
		count_lost();
	}
	if (delta_us >= min_us)
		emit(s, key, id, delta_us, ctx->ret);
	return 0;
}

/* `op` is a string literal: each program copies its own constant bytes into the key. */
#define ON_EXIT(ctx, op_name)                                                           \
	({                                                                              \
		struct filelat_hist_key key = {};                                       \
		__builtin_memcpy(key.op, op_name, sizeof(op_name));                    \
		on_exit(ctx, &key);                                                     \
	})

/* Program names stay under 16 bytes, the kernel's limit: fl_e_ entry, fl_x_ exit. */
SEC("tp/syscalls/sys_enter_read")
int fl_e_read(struct filelat_sys_enter *ctx) { return on_enter(ctx); }
SEC("tp/syscalls/sys_exit_read")
int fl_x_read(struct filelat_sys_exit *ctx) { return ON_EXIT(ctx, "read"); }

SEC("tp/syscalls/sys_enter_write")
int fl_e_write(struct filelat_sys_enter *ctx) { return on_enter(ctx); }
SEC("tp/syscalls/sys_exit_write")
int fl_x_write(struct filelat_sys_exit *ctx) { return ON_EXIT(ctx, "write"); }

SEC("tp/syscalls/sys_enter_pread64")
int fl_e_pread64(struct filelat_sys_enter *ctx) { return on_enter(ctx); }
SEC("tp/syscalls/sys_exit_pread64")
int fl_x_pread64(struct filelat_sys_exit *ctx) { return ON_EXIT(ctx, "pread64"); }

SEC("tp/syscalls/sys_enter_pwrite64")
int fl_e_pwrite64(struct filelat_sys_enter *ctx) { return on_enter(ctx); }
SEC("tp/syscalls/sys_exit_pwrite64")
int fl_x_pwrite64(struct filelat_sys_exit *ctx) { return ON_EXIT(ctx, "pwrite64"); }

SEC("tp/syscalls/sys_enter_readv")
int fl_e_readv(struct filelat_sys_enter *ctx) { return on_enter(ctx); }
SEC("tp/syscalls/sys_exit_readv")
int fl_x_readv(struct filelat_sys_exit *ctx) { return ON_EXIT(ctx, "readv"); }

SEC("tp/syscalls/sys_enter_writev")
int fl_e_writev(struct filelat_sys_enter *ctx) { return on_enter(ctx); }
SEC("tp/syscalls/sys_exit_writev")
int fl_x_writev(struct filelat_sys_exit *ctx) { return ON_EXIT(ctx, "writev"); }

SEC("tp/syscalls/sys_enter_fsync")
int fl_e_fsync(struct filelat_sys_enter *ctx) { return on_enter(ctx); }
SEC("tp/syscalls/sys_exit_fsync")
int fl_x_fsync(struct filelat_sys_exit *ctx) { return ON_EXIT(ctx, "fsync"); }

SEC("tp/syscalls/sys_enter_fdatasync")
int fl_e_fdatasync(struct filelat_sys_enter *ctx) { return on_enter(ctx); }
SEC("tp/syscalls/sys_exit_fdatasync")
int fl_x_fdatasync(struct filelat_sys_exit *ctx) { return ON_EXIT(ctx, "fdatasync"); }

char LICENSE[] SEC("license") = "Dual BSD/GPL";
