"""cffi build script for ``loader._libbpf``: libbpf.so.1 plus loader/native/bpfdepot_native.c.

Run by setuptools at install time (``cffi_modules`` in setup.py); needs gcc and libbpf-dev.
Only loader/libbpf.py imports the result.
"""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
# setuptools wants paths relative to setup.py
NATIVE = "loader/native"

CDEF = """
struct bpf_object;
struct bpf_program;
struct bpf_map;
struct bpf_link;
struct ring_buffer;

struct bpfdepot_op {
    int kind;
    unsigned int offset;
    unsigned int size;
    unsigned int aux;
    unsigned int aux_size;
    const char *prefix;
    unsigned int prefix_len;
};

struct bpfdepot_encoder {
    const struct bpfdepot_op *ops;
    unsigned int nops;
    unsigned int event_size;
    unsigned int max_record;
    char *out;
    size_t len, cap;
    uint64_t events, short_events;
};

void bpfdepot_log_capture(int debug);
size_t bpfdepot_log_take(char *out, size_t cap);
size_t bpfdepot_log_size(void);
struct bpf_object *bpfdepot_open(const char *path, const char *btf_custom_path);
int bpfdepot_probe_prog(int prog_type, int attach_type, int attach_btf_id);
int bpfdepot_probe_map(int map_type, int key_size, int value_size, int max_entries);
int bpfdepot_vmlinux_btf_id(const char *name, int kind);
int bpfdepot_encode_batch(struct bpfdepot_encoder *enc, const void *data, size_t size, size_t count);
void bpfdepot_encoder_free(struct bpfdepot_encoder *enc);
struct ring_buffer *bpfdepot_ring_add(struct ring_buffer *rb, int map_fd, struct bpfdepot_encoder *enc);

int bpf_object__load(struct bpf_object *obj);
void bpf_object__close(struct bpf_object *obj);
struct bpf_program *bpf_object__next_program(const struct bpf_object *obj, struct bpf_program *prog);
struct bpf_map *bpf_object__next_map(const struct bpf_object *obj, const struct bpf_map *map);
const char *bpf_program__name(const struct bpf_program *prog);
const char *bpf_program__section_name(const struct bpf_program *prog);
bool bpf_program__autoload(const struct bpf_program *prog);
int bpf_program__set_autoload(struct bpf_program *prog, bool autoload);
int bpf_program__fd(const struct bpf_program *prog);
struct bpf_link *bpf_program__attach(const struct bpf_program *prog);
int bpf_link__destroy(struct bpf_link *link);
const char *bpf_map__name(const struct bpf_map *map);
int bpf_map__fd(const struct bpf_map *map);
uint32_t bpf_map__max_entries(const struct bpf_map *map);
void *bpf_map__initial_value(struct bpf_map *map, size_t *psize);
bool bpf_map__is_internal(const struct bpf_map *map);
uint32_t bpf_map__value_size(const struct bpf_map *map);
int bpf_map_lookup_elem(int fd, const void *key, void *value);
int ring_buffer__poll(struct ring_buffer *rb, int timeout_ms);
int ring_buffer__epoll_fd(const struct ring_buffer *rb);

struct bpfdepot_wbuf {
    char *buf;
    size_t len, cap;
    uint64_t events;
};
struct bpfdepot_route {
    unsigned int index;
    struct bpfdepot_encoder key;
    unsigned int key_bytes;
    unsigned int key_end;
    unsigned int nworkers, next;
    struct bpfdepot_wbuf **workers;
    uint64_t sent;
};
struct bpfdepot_channel {
    struct bpfdepot_encoder *enc;
    struct bpfdepot_route *routes;
    unsigned int nroutes;
    unsigned int event_size;
    uint64_t events, short_events;
};
struct bpfdepot_route_out {
    struct bpfdepot_wbuf lines;
    struct bpfdepot_wbuf keys;
    uint64_t kept, dropped, errors, bad;
};
#define BPFDEPOT_OUT_MARKER ...
#define BPFDEPOT_OUT_HEADER ...
#define BPFDEPOT_RESULT_CAP ...
#define BPFDEPOT_KEY_MAX ...
enum bpfdepot_violation {
    BPFDEPOT_FRAME_OK, BPFDEPOT_FRAME_MARKER, BPFDEPOT_FRAME_SEQ, BPFDEPOT_FRAME_LEN,
    BPFDEPOT_FRAME_KEY_LEN, BPFDEPOT_FRAME_ROUTE, BPFDEPOT_FRAME_RC,
};
struct bpfdepot_results {
    struct bpfdepot_route_out *routes;
    unsigned int nroutes;
    int keys;
    uint64_t frames;
    uint64_t offset;
    int violation;
    uint64_t violation_at;
    uint64_t violation_value;
};
struct bpfdepot_progress {
    uint64_t handled;
    uint32_t in_user;
    uint32_t ready;
    uint32_t abi;
    uint32_t pad;
};
struct bpfdepot_host_args {
    const char *label, *so_path, *initfile, *init, *pre, *post;
    const char **process;
    const char **channels;
    unsigned int nroutes;
    unsigned int abi;
    int in_fd, out_fd, shm_fd;
};
struct ring_buffer *bpfdepot_ring_add_channel(struct ring_buffer *rb, int map_fd,
                                              struct bpfdepot_channel *ch);
int bpfdepot_channel_sample(void *ctx, void *data, size_t size);
size_t bpfdepot_frames_span(const char *data, size_t len, size_t max_bytes, uint64_t max_frames,
                            uint64_t *frames);
size_t bpfdepot_results_feed(struct bpfdepot_results *res, const char *data, size_t len);
void bpfdepot_wbuf_free(struct bpfdepot_wbuf *w);
int bpfdepot_host_run(const struct bpfdepot_host_args *args);
int ring_buffer__consume(struct ring_buffer *rb);
void ring_buffer__free(struct ring_buffer *rb);
int libbpf_num_possible_cpus(void);
int libbpf_strerror(int err, char *buf, size_t size);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "loader._libbpf",
    '#include "bpfdepot_native.h"\n#include <bpf/bpf.h>\n',
    sources=[f"{NATIVE}/bpfdepot_native.c", f"{NATIVE}/bpfdepot_route.c"],
    include_dirs=[NATIVE],
    libraries=["bpf", "dl"],
    extra_compile_args=["-O2", "-Wall"],
)

if __name__ == "__main__":
    import os

    os.chdir(HERE.parent)
    ffibuilder.compile(tmpdir=".", verbose=True)
