/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* bpfdepot.h: the BPF-side contract between a catalog program and the bpfdepot loader.
 *
 * BPFDEPOT_CHANNEL(events, struct my_event, 256 * 1024) declares
 *   - `events`, a BPF ring buffer of 256 KiB: the channel the manifest names;
 *   - `events_lost`, a per-CPU counter of failed reservations, which the loader reports;
 *   - `bpfdepot_event__events`, a marker variable whose BTF type tells the loader (and
 *     `bpfdepot inspect`) which struct the channel carries, for default decoding.
 *
 * bpfdepot_reserve(events) reserves one event (NULL, and counted, when the ring is full);
 * bpfdepot_submit(events, e) sends it, waking the reader only when it should (below);
 * bpf_ringbuf_submit(e, 0) sends it too, with the kernel's own wakeup policy.
 *
 * Batched wakeups: a wakeup per event costs the traced task more than the event when events
 * come fast (the kernel queues work to wake the reader each time it had caught up). With
 * bpfdepot_submit the reader is woken only when `events_wakeup_bytes` are waiting, or when the
 * last wakeup is `events_wakeup_ns` old (a lone event after a quiet spell is sent at once);
 * the loader sets both before load from the channel's `latency:` (loader/outputs/ring_buffer.py)
 * and reads the ring on a timer while it is busy, so an event waits `latency` at most. Left at
 * 0 (a loader that knows nothing of them) every submit wakes as bpf_ringbuf_submit(e, 0) does.
 *
 * bpfdepot_monitored(&label) is the in-kernel process filter (`bpfdepot run --unit/--cgroup/
 * --pid/--filter-file`): false when the current task is outside what the run monitors,
 * else true with `label` set to the label id of what matched (0 when no filter is on), which the
 * program stamps into its event. A program asks for it with `#define BPFDEPOT_FILTER` before
 * the include (so the others get no monitor maps). Its mode knob is `static`, so clang keeps it
 * only when a program calls the helper: that is how the loader knows an object honours the
 * filter (and refuses, naming it, one that does not).
 */
#ifndef __BPFDEPOT_H
#define __BPFDEPOT_H

#include <bpf/bpf_helpers.h>

/* Default decoding reads these typedefs from BTF: an address typed bpfdepot_ipv4 prints as
 * "a.b.c.d"; one typed bpfdepot_ip prints as IPv4 or IPv6 text, chosen by the `family`
 * field of the same struct (AF_INET = 2 uses the first 4 bytes). */
typedef __u32 bpfdepot_ipv4;   /* network byte order */
typedef __u8 bpfdepot_ip[16];  /* network byte order */

#define BPFDEPOT_CHANNEL(_name, _type, _bytes)                                  \
	struct {                                                                 \
		__uint(type, BPF_MAP_TYPE_RINGBUF);                              \
		__uint(max_entries, _bytes);                                     \
	} _name SEC(".maps");                                                    \
	struct {                                                                 \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);                         \
		__uint(max_entries, 1);                                          \
		__type(key, __u32);                                              \
		__type(value, __u64);                                            \
	} _name##_lost SEC(".maps");                                             \
	const volatile __u64 _name##_wakeup_bytes = 0;                           \
	const volatile __u64 _name##_wakeup_ns = 0;                              \
	__u64 _name##_woken_ns = 0;                                              \
	_type *bpfdepot_event__##_name __attribute__((used))

static __always_inline void *bpfdepot__reserve(void *ring, void *lost, __u64 size)
{
	void *e = bpf_ringbuf_reserve(ring, size, 0);

	if (!e) {
		__u32 zero = 0;
		__u64 *n = bpf_map_lookup_elem(lost, &zero);

		if (n)
			*n += 1; /* per-CPU slot: no atomic needed */
	}
	return e;
}

#define bpfdepot_reserve(_name)                                                 \
	((typeof(bpfdepot_event__##_name))bpfdepot__reserve(                     \
		&_name, &_name##_lost, sizeof(*bpfdepot_event__##_name)))

/* The flags for submitting to `ring` (see Batched wakeups above). `woken` is shared by every
 * CPU without a lock: a race only ever adds a wakeup. */
static __always_inline __u64 bpfdepot__wakeup(void *ring, __u64 bytes, __u64 bound_ns, __u64 *woken)
{
	__u64 now;

	if (!bytes)
		return 0;
	now = bpf_ktime_get_ns();
	if (bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA) < bytes && now - *woken < bound_ns)
		return BPF_RB_NO_WAKEUP;
	*woken = now;
	return BPF_RB_FORCE_WAKEUP;
}

#define bpfdepot_submit(_name, _e)                                              \
	bpf_ringbuf_submit(_e, bpfdepot__wakeup(&_name, _name##_wakeup_bytes,    \
						 _name##_wakeup_ns, &_name##_woken_ns))

#ifdef BPFDEPOT_FILTER /* #define it before including this header to use bpfdepot_monitored() */

/* The monitor maps: one pair per run, created and filled by the loader (loader/monitor.py)
 * and handed to every object of the run with bpf_map__reuse_fd() before load. Not pinned: a
 * pinned map outlives a crashed run and would be shared by concurrent runs. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);   /* cgroup2 id: the inode of the cgroup2 directory */
	__type(value, __u32); /* label id */
} bpfdepot_monitor_cgroups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);   /* tgid */
	__type(value, __u32); /* label id */
} bpfdepot_monitor_pids SEC(".maps");

#define BPFDEPOT_FILTER_OFF 0
#define BPFDEPOT_FILTER_PIDS 1
#define BPFDEPOT_FILTER_CGROUPS 2
#define BPFDEPOT_FILTER_EITHER 3 /* pids | cgroups */
#define BPFDEPOT_CGROUP_LEVELS 8 /* ancestors looked up, from the cgroup2 root's child down */

/* Set by the loader from what the run asks for; 0 costs one branch per event. */
static const volatile __u8 bpfdepot_filter_mode = BPFDEPOT_FILTER_OFF;

static __always_inline bool bpfdepot_monitored(__u32 *label)
{
	__u8 mode = bpfdepot_filter_mode;
	__u32 *found;

	*label = 0;
	if (mode == BPFDEPOT_FILTER_OFF)
		return true;
	if (mode & BPFDEPOT_FILTER_CGROUPS) {
		/* Level 1 is the child of the cgroup2 root (e.g. system.slice): a unit or pod and every
		 * cgroup below it match in at most 8 lookups, with no array of cgroup fds to keep.
		 * Past the task's own level the helper returns 0, which is never a key. The deepest
		 * match wins, so a worker cgroup can carry its own label under its unit's. */
		__u32 *best = NULL;

		for (int level = 1; level <= BPFDEPOT_CGROUP_LEVELS; level++) {
			__u64 id = bpf_get_current_ancestor_cgroup_id(level);

			if (!id)
				break;
			found = bpf_map_lookup_elem(&bpfdepot_monitor_cgroups, &id);
			if (found)
				best = found;
		}
		if (best) {
			*label = *best;
			return true;
		}
	}
	if (mode & BPFDEPOT_FILTER_PIDS) {
		__u32 tgid = bpf_get_current_pid_tgid() >> 32;

		found = bpf_map_lookup_elem(&bpfdepot_monitor_pids, &tgid);
		if (found) {
			*label = *found;
			return true;
		}
	}
	return false;
}

#endif /* BPFDEPOT_FILTER */
#endif /* __BPFDEPOT_H */
