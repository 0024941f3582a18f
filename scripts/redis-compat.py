#!/usr/bin/env python3
"""Sends the same commands to redis-server and to a Basalt node's RESP port and prints every
reply that differs, byte for byte. Usage: scripts/redis-compat.py REDIS_PORT BASALT_PORT

Both servers should be empty scratch instances (the script writes keys under `compat:`; it runs
FLUSHALL on redis-server only). Known, documented differences (docs/redis.md) are listed in
EXPECTED_DIFFERENCES and reported apart. Exit status 1 if any other reply differs."""

import socket
import sys
import time

COMMANDS = """\
HSET compat:h name ann age 30
HSET compat:h name bea city oslo
HMGET compat:h age none city
HINCRBY compat:h age 5
HINCRBY compat:h name 1
HINCRBYFLOAT compat:h score 1.5
HSETNX compat:h city rome
HSET compat:h odd
HDEL compat:h score none
HLEN compat:h
HSTRLEN compat:h city
HKEYS compat:none
SET compat:s text
HSET compat:s f v
GET compat:h
INCR compat:h
MGET compat:s compat:h
TYPE compat:h
ZADD compat:z 900 old 1200 req-0 2000 req-2 1500 req-1
ZREMRANGEBYSCORE compat:z -inf (1000
ZCOUNT compat:z (1200 +inf
ZCOUNT compat:z x 1
ZRANGE compat:z 0 -1 WITHSCORES
ZRANGE compat:z (1200 +inf BYSCORE LIMIT 1 5
ZRANGE compat:z +inf -inf BYSCORE REV LIMIT 0 2
ZRANGEBYSCORE compat:z 0 inf WITHSCORES LIMIT 0 1
ZREVRANGEBYSCORE compat:z 1500 -inf
ZRANGE compat:z 0 1 REV
ZRANGE compat:z -2 -1 REV
ZRANGE compat:z -100 100
ZRANGE compat:z 2 1
ZRANGE compat:z 0 1 LIMIT 0 1
ZRANGE compat:z a b
ZINCRBY compat:z 0.5 req-1
ZADD compat:z NX 1 req-1
ZADD compat:z GT CH 1 req-1 3000 req-2
ZADD compat:z XX INCR 1 req-2
ZADD compat:z XX INCR 1 none
ZADD compat:z NX XX 1 a
ZADD compat:z GT LT 1 a
ZADD compat:z one a
ZADD compat:z INCR 1 a 2 b
ZADD compat:z 1
ZRANGE compat:z 0 -1 BYLEX
ZSCORE compat:z req-1
ZREM compat:z req-0 none
TYPE compat:z
MULTI
INCR compat:n
HSET compat:h2 f v
INCR compat:h2
ZADD compat:z2 1 m
ZCARD compat:z2
GETDEL compat:n
EXEC
HELLO 3
ZRANGE compat:z 0 0 WITHSCORES
ZSCORE compat:z req-1
HGETALL compat:h2
"""

# Differences docs/redis.md names: (command, why).
EXPECTED_DIFFERENCES = {
    "ZRANGE compat:z 0 -1 BYLEX": "BYLEX is refused on Basalt",
    "HELLO 3": "server version and client id",
}


def call(sock, args):
    request = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
    sock.sendall(request)
    time.sleep(0.05)
    return sock.recv(1 << 20)


def replies(port, flush):
    sock = socket.create_connection(("127.0.0.1", port))
    if flush:
        call(sock, [b"FLUSHALL"])
    out = []
    for line in COMMANDS.strip().split("\n"):
        out.append((line, call(sock, [w.encode() for w in line.split()])))
    return out


def main():
    redis_port, basalt_port = int(sys.argv[1]), int(sys.argv[2])
    redis = replies(redis_port, flush=True)
    basalt = replies(basalt_port, flush=False)
    unexpected = 0
    for (line, want), (_, got) in zip(redis, basalt):
        if want == got:
            continue
        why = EXPECTED_DIFFERENCES.get(line)
        print(f"{'expected' if why else 'DIFFERS'}: {line}\n  redis:  {want!r}\n  basalt: {got!r}"
              + (f"\n  ({why})" if why else ""))
        unexpected += why is None
    print(f"{len(redis)} commands, {unexpected} unexpected differences")
    sys.exit(1 if unexpected else 0)


if __name__ == "__main__":
    main()
