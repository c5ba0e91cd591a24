/* bpfdepot_native.h: what loader/native/bpfdepot_native.c offers; the cdef in
 * loader/_libbpf_build.py mirrors it. */
#ifndef BPFDEPOT_NATIVE_H
#define BPFDEPOT_NATIVE_H

#include <stddef.h>
#include <stdint.h>
#include <bpf/libbpf.h>

enum {
	OP_LIT, OP_U, OP_S, OP_BE, OP_BOOL, OP_CHARS, OP_IPV4, OP_IPV6, OP_IPFAM,
	OP_UBITS, OP_SBITS, OP_F32, OP_F64, OP_HEX,
};

struct bpfdepot_op {
	int kind;
	unsigned int offset;   /* byte offset of the field in the event */
	unsigned int size;     /* bytes (bits for *BITS) */
	unsigned int aux;      /* IPFAM: offset of `family`; *BITS: bit shift */
	unsigned int aux_size; /* IPFAM: size of `family`; *BITS: bytes to load */
	const char *prefix;    /* JSON text written before the value, e.g. ,"pid": */
	unsigned int prefix_len;
};

struct bpfdepot_encoder {
	const struct bpfdepot_op *ops;
	unsigned int nops;
	unsigned int event_size; /* the struct's size; shorter samples are counted, not decoded */
	unsigned int max_record; /* upper bound of one encoded record, bytes */
	char *out;
	size_t len, cap;
	uint64_t events, short_events;
};

void bpfdepot_log_append(const char *s, size_t n);
void bpfdepot_log_capture(int debug);
size_t bpfdepot_log_take(char *out, size_t cap);
size_t bpfdepot_log_size(void);
struct bpf_object *bpfdepot_open(const char *path, const char *btf_custom_path);
int bpfdepot_probe_prog(int prog_type, int attach_type, int attach_btf_id);
int bpfdepot_probe_map(int map_type, int key_size, int value_size, int max_entries);
int bpfdepot_vmlinux_btf_id(const char *name, int kind);
int bpfdepot_encode_sample(void *ctx, void *data, size_t size);
int bpfdepot_encode_batch(struct bpfdepot_encoder *enc, const void *data, size_t size, size_t count);
void bpfdepot_encoder_free(struct bpfdepot_encoder *enc);
struct ring_buffer *bpfdepot_ring_add(struct ring_buffer *rb, int map_fd, struct bpfdepot_encoder *enc);

#endif
