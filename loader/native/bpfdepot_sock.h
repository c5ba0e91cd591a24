/* bpfdepot_sock.h: what loader/native/bpfdepot_sock.c offers (iterators); handed to cffi as
 * it is by loader/_libbpf_build.py, so plain C declarations only. */
#ifndef BPFDEPOT_SOCK_H
#define BPFDEPOT_SOCK_H

#include <stdint.h>
#include <bpf/libbpf.h>

/* bpf_program__attach_iter with the iterator's parameters: map_fd > 0 for iter/bpf_map_elem
 * (and the other map iterators), tid or pid > 0 for iter/task* on one thread or process (6.1+).
 * NULL with errno set on failure, as libbpf does. */
struct bpf_link *bpfdepot_attach_iter(const struct bpf_program *prog, int map_fd, uint32_t tid,
				      uint32_t pid);

/* The id of the program behind a link fd, or of a program fd; 0 (errno set) when it fails. */
uint32_t bpfdepot_link_prog_id(int link_fd);
uint32_t bpfdepot_prog_id(int prog_fd);

#endif
