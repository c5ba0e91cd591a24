/* tcp_socks.h: what the tcp_socks iterator prints. It writes text (one JSON object per socket,
 * per line) through BPF_SEQ_PRINTF rather than an event struct: an iterator's output is a
 * seq_file, read by the loader's `type: iterator` channel with `format: json`. */
#ifndef TCP_SOCKS_H
#define TCP_SOCKS_H

#define AF_INET 2
#define AF_INET6 10

/* include/net/tcp_states.h: TCP_ESTABLISHED 1 ... TCP_LISTEN 10, TCP_NEW_SYN_RECV 12 */
#define TCP_LISTEN 10
#define TCP_NEW_SYN_RECV 12

#endif
