/* bpfdepot_native.h: what loader/native/bpfdepot_native.c offers; loader/_libbpf_build.py
 * hands these declarations to cffi as they are (keep them plain C). */
#ifndef BPFDEPOT_NATIVE_H
#define BPFDEPOT_NATIVE_H

#include <stddef.h>
#include <stdint.h>
#include <bpf/libbpf.h>

enum {
	OP_LIT, OP_U, OP_S, OP_BE, OP_BOOL, OP_CHARS, OP_IPV4, OP_IPV6, OP_IPFAM,
	OP_UBITS, OP_SBITS, OP_F32, OP_F64, OP_HEX,
	OP_NAME,    /* an integer as its name from names[aux] (the number when it has none) */
	OP_KSYM,    /* a kernel address as "symbol+0xoff" from the encoder's symbol table */
	OP_STRINGS, /* NUL-separated strings (argv, envp) as a JSON list */
	OP_U128,    /* a 128-bit integer as a "0x..." string (JSON numbers stop at 2^53) */
	OP_IFNE,    /* unless the field (aux_size bytes at offset) equals value: skip jump ops */
	OP_GOTO,    /* skip jump ops (the end of a union member chosen by OP_IFNE) */
};

struct bpfdepot_op {
	int kind;
	unsigned int offset;   /* byte offset of the field in the event */
	unsigned int size;     /* bytes (bits for *BITS) */
	unsigned int aux;      /* IPFAM: offset of `family`; *BITS: bit shift; NAME: table;
	                        * HEX: 1 = an integer, bytes printed last first */
	unsigned int aux_size; /* IPFAM: size of `family`; *BITS: bytes to load; IFNE: size */
	const char *prefix;    /* JSON text written before the value, e.g. ,"pid": */
	unsigned int prefix_len;
	unsigned int jump;     /* IFNE, GOTO: how many ops to skip */
	int64_t value;         /* IFNE: the value that selects the ops after it */
};

#define BPFDEPOT_NAMES_NEGATED 1 /* errno style: -v is looked up for v < 0; v >= 0 is a number */

struct bpfdepot_names { /* integer -> name, sorted by value (enum names, errno names) */
	const int64_t *values;
	const char *const *names; /* JSON strings, quotes included */
	const uint32_t *lens;
	unsigned int n;
	unsigned int flags;
	unsigned int is_signed;   /* the field is read as signed */
};

struct bpfdepot_syms { /* kernel symbols sorted by address (/proc/kallsyms) */
	const uint64_t *addrs;
	const char *const *names; /* plain names, no quotes */
	const uint32_t *lens;
	unsigned int n;
};

struct bpfdepot_encoder {
	const struct bpfdepot_op *ops;
	unsigned int nops;
	unsigned int event_size; /* the fixed part: shorter samples are counted short, not decoded;
	                          * longer ones are decoded as received (a trailing array or
	                          * string only as far as the sample goes, fields past it null) */
	unsigned int max_record; /* upper bound of one encoded record, bytes */
	char *out;
	size_t len, cap;
	uint64_t events, short_events;
	const struct bpfdepot_names *names; /* tables of OP_NAME */
	unsigned int nnames;
	const struct bpfdepot_syms *syms;   /* for OP_KSYM */
};

/* ---- processor routes (bpfdepot_route.c) ---- */

/* The processor ABI's structs (templates/bpfdepot_processor.h.j2), as the host calls them. */
struct bpfdepot_event {
	const void *data;
	const char *channel;
	uint64_t ts_ns;
	uint32_t size;
	uint32_t cpu;
};

struct bpfdepot_result {
	char *data;
	char *key;
	uint32_t cap;
	uint32_t len;
	uint32_t key_cap;
	uint32_t key_len;
};

typedef int bpfdepot_process_fn_t(const struct bpfdepot_event *, struct bpfdepot_result *);
typedef int bpfdepot_pre_fn_t(const struct bpfdepot_event *);
typedef int bpfdepot_post_fn_t(const struct bpfdepot_event *, const struct bpfdepot_result *, int);

#define BPFDEPOT_KEY_MAX 512 /* bytes of key text; the ABI promises processors at least 256 */

struct bpfdepot_wbuf { /* a growing byte buffer Python empties */
	char *buf;
	size_t len, cap;
	uint64_t events;
};

struct bpfdepot_route { /* one consumer of a channel: a processor and its workers */
	unsigned int index;           /* the route's number in frames */
	struct bpfdepot_encoder key;  /* one op: the hash field as text; nops 0 = no hash */
	unsigned int key_bytes;       /* bytes of the field hashed */
	unsigned int key_end;         /* events shorter than this have no key */
	unsigned int key_text;        /* 1: frames carry the key as text (a sink keys records) */
	unsigned int nworkers, next;  /* next: round robin when there is no key */
	struct bpfdepot_wbuf **workers;
	uint64_t sent;                /* events framed for its workers */
};

struct bpfdepot_channel {
	struct bpfdepot_encoder *enc; /* default decoding; NULL when processors consume it */
	struct bpfdepot_route *routes;
	unsigned int nroutes;
	unsigned int event_size;
	uint64_t events, short_events;
};

struct bpfdepot_route_out { /* what came back for one route */
	struct bpfdepot_wbuf lines; /* records, one per line */
	struct bpfdepot_wbuf keys;  /* their keys, one per line (empty line: no key) */
	uint64_t kept, dropped, errors, bad;
};

/* Output frames: a marker, then the ordinal of the input event answered (per worker
 * incarnation, from 0), so bytes a processor writes to the pipe itself cannot pass as records. */
#define BPFDEPOT_OUT_MARKER 0xBDF5E9A1u
#define BPFDEPOT_OUT_HEADER 16
#define BPFDEPOT_RESULT_CAP (64u << 10) /* bytes of record the host gives process() */

enum bpfdepot_violation { /* why a worker's output stopped being parsed */
	BPFDEPOT_FRAME_OK, BPFDEPOT_FRAME_MARKER, BPFDEPOT_FRAME_SEQ, BPFDEPOT_FRAME_LEN,
	BPFDEPOT_FRAME_KEY_LEN, BPFDEPOT_FRAME_ROUTE, BPFDEPOT_FRAME_RC,
};

struct bpfdepot_results {
	struct bpfdepot_route_out *routes;
	unsigned int nroutes;
	int keys;               /* gather keys too (a sink needs them) */
	uint64_t frames;        /* valid frames parsed; the next must carry (u32)frames */
	uint64_t offset;        /* bytes of the stream consumed before this call's data */
	int violation;          /* enum bpfdepot_violation; once set, nothing more is parsed */
	uint64_t violation_at;  /* stream offset of the frame that broke the rules */
	uint64_t violation_value; /* the field that broke them: marker, seq, length, route or rc */
};

struct bpfdepot_progress { /* a shared page the host writes and the loader reads */
	uint64_t handled;   /* events finished: their output frames are in the buffer */
	uint32_t in_user;   /* 1 while a processor function runs */
	uint32_t ready;     /* init returned 0 */
	uint32_t abi;       /* the library's ABI version */
	uint32_t pad;
};

struct bpfdepot_host_args {
	const char *label, *so_path, *initfile, *init, *pre, *post;
	const char **process;  /* per route: the function called */
	const char **channels; /* per route: the channel name handed to it */
	unsigned int nroutes;
	unsigned int abi;
	int in_fd, out_fd, shm_fd;
};

enum { BPFDEPOT_HOST_SETUP = 3, BPFDEPOT_HOST_INIT = 4, BPFDEPOT_HOST_PROTOCOL = 5 };

char *bpfdepot_encode_fields(const struct bpfdepot_encoder *enc, const void *data, size_t size,
			     char *out);
int bpfdepot_channel_sample(void *ctx, void *data, size_t size);
struct ring_buffer *bpfdepot_ring_add_channel(struct ring_buffer *rb, int map_fd,
					      struct bpfdepot_channel *ch);
size_t bpfdepot_frames_span(const char *data, size_t len, size_t max_bytes, uint64_t max_frames,
			    uint64_t *frames);
size_t bpfdepot_results_feed(struct bpfdepot_results *res, const char *data, size_t len);
void bpfdepot_wbuf_free(struct bpfdepot_wbuf *w);
int bpfdepot_host_run(const struct bpfdepot_host_args *args);

void bpfdepot_log_append(const char *s, size_t n);
void bpfdepot_log_capture(int debug);
size_t bpfdepot_log_take(char *out, size_t cap);
size_t bpfdepot_log_size(void);
struct bpf_object *bpfdepot_open(const char *path, const char *btf_custom_path);
int bpfdepot_probe_prog(int prog_type, int attach_type, int attach_btf_id);
int bpfdepot_probe_map(int map_type, int key_size, int value_size, int max_entries);
int bpfdepot_vmlinux_btf_id(const char *name, int kind);
int bpfdepot_vmlinux_btf_ids(const char **names, const int *kinds, int *ids, int n);
int bpfdepot_encode_sample(void *ctx, void *data, size_t size);
int bpfdepot_encode_batch(struct bpfdepot_encoder *enc, const void *data, size_t size, size_t count);
void bpfdepot_encoder_free(struct bpfdepot_encoder *enc);
struct ring_buffer *bpfdepot_ring_add(struct ring_buffer *rb, int map_fd, struct bpfdepot_encoder *enc);

#endif
