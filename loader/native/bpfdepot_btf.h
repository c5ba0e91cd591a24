/* bpfdepot_btf.h: the two loops over a kernel's ~130k BTF types that Python would spend ~0.1 s
 * on, in loader/native/bpfdepot_btf.c (loader/kernel/btf.py, builder/relocate.py). Plain C for
 * cffi's cdef. */
#ifndef BPFDEPOT_BTF_H
#define BPFDEPOT_BTF_H

#include <stddef.h>
#include <stdint.h>

long bpfdepot_btf_starts(const uint32_t *words, size_t nwords, uint32_t *out, size_t cap);
long bpfdepot_btf_names(const uint32_t *words, const uint32_t *starts, size_t ntypes,
			uint64_t *out);

#endif
