#!/usr/bin/env python3
"""Shares of a folded-stack profile (inferno-collapse-perf output): per thread, and per kind of work.

Each stack counts once, for the innermost frame that names a kind, so a TCP send inside lapin's
writer counts as TCP, not as AMQP framing.
"""
import collections
import sys

KINDS = [
    ("kernel: scheduler (context switches, wake-ups)",
     ["finish_task_switch", "__schedule", "_raw_spin_unlock_irq", "try_to_wake_up", "futex_wake", "futex_wait"]),
    ("kernel: TCP send/receive",
     ["tcp_sendmsg", "tcp_recvmsg", "__sys_sendto", "__sys_recvfrom", "sock_read_iter", "sock_write_iter",
      "tcp_v4_rcv", "handle_softirqs"]),
    ("kernel: epoll / eventfd", ["do_epoll_wait", "eventfd_write", "ep_poll"]),
    ("allocator", ["malloc", "_int_free", "cfree", "realloc", "malloc_consolidate", "unlink_chunk"]),
    ("signature, decryption, digest", ["sha1", "sha2", "aes", "cbc", "base64"]),
    ("JSON", ["serde_json"]),
    ("AMQP framing (lapin, amq-protocol)", ["amq_protocol", "nom::", "lapin::frames", "lapin::buffer"]),
    ("HTTP (actix-http, reqwest, hyper)", ["actix_http", "hyper", "h2::", "reqwest"]),
    ("tracing, metrics", ["tracing", "metrics"]),
]


def main(path):
    threads, kinds, total = collections.Counter(), collections.Counter(), 0
    with open(path) as folded:
        for line in folded:
            stack, _, weight = line.rstrip().rpartition(" ")
            weight = int(weight)
            total += weight
            frames = stack.split(";")
            threads[frames[0]] += weight
            kind = next((name for frame in reversed(frames)
                         for name, keys in KINDS if any(k in frame for k in keys)), "other user code")
            kinds[kind] += weight
    total = max(total, 1)
    print("share of CPU samples by thread:")
    for name, weight in threads.most_common():
        print(f"  {name:24s} {100 * weight / total:5.1f} %")
    print("by kind of work:")
    for name, weight in kinds.most_common():
        print(f"  {name:48s} {100 * weight / total:5.1f} %")


if __name__ == "__main__":
    main(sys.argv[1])
