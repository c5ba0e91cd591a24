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
 * bpf_ringbuf_submit(e, 0) sends it.
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

#endif /* __BPFDEPOT_H */
