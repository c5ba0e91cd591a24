/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* bits.bpf.h: log2 bucketing for histogram programs (slot i counts values in [2^i, 2^(i+1));
 * slot 0 holds 0 and 1), the layout `type: histogram` with `buckets: log2` reads. */
#ifndef __BPFDEPOT_BITS_BPF_H
#define __BPFDEPOT_BITS_BPF_H

/* floor(log2(v)) by halving the search range: no loop, so the verifier sees a fixed cost */
static __always_inline __u32 log2_u32(__u32 v)
{
	__u32 shift, r;

	r = (v > 0xFFFF) << 4; v >>= r;
	shift = (v > 0xFF) << 3; v >>= shift; r |= shift;
	shift = (v > 0xF) << 2; v >>= shift; r |= shift;
	shift = (v > 0x3) << 1; v >>= shift; r |= shift;
	r |= (v >> 1);
	return r;
}

static __always_inline __u32 log2_u64(__u64 v)
{
	__u32 hi = v >> 32;

	return hi ? log2_u32(hi) + 32 : log2_u32(v);
}

#endif /* __BPFDEPOT_BITS_BPF_H */
