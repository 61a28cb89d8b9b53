"""redis-py against a sealkv node, with redis-py's default settings (so RESP3).

Usage: redis_py.py HOST PORT [PASSWORD]

Prints one JSON object with what each step returned; the Rust test
(clients.rs) checks it. With PASSWORD, it first checks that connecting without
it, or with a wrong one, is refused.
"""

import json
import sys

import redis


def text(value):
    return value.decode() if isinstance(value, bytes) else value


def refused(**kwargs):
    try:
        redis.Redis(**kwargs).ping()
    except redis.exceptions.AuthenticationError as e:
        return f"{type(e).__name__}: {e}"
    return "connected"


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    password = sys.argv[3] if len(sys.argv) > 3 else None
    common = {"host": host, "port": port, "socket_timeout": 15}
    out = {"redis_py": redis.__version__}
    if password is not None:
        out["no_password"] = refused(**common)
        out["wrong_password"] = refused(password="wrong", **common)

    r = redis.Redis(password=password, **common)
    out["ping"] = r.ping()
    out["set"] = r.set("py:k", "v")
    out["get"] = text(r.get("py:k"))
    out["get_missing"] = r.get("py:missing")
    out["set_nx"] = r.set("py:k", "w", nx=True)
    out["incr"] = [r.incr("py:n"), r.incr("py:n", 5), r.decr("py:n")]
    out["mget"] = [text(v) for v in r.mget("py:k", "py:missing")]
    out["expire"] = r.expire("py:k", 100)
    out["ttl"] = r.ttl("py:k")
    pipe = r.pipeline(transaction=False)
    pipe.set("py:p", "1").get("py:p").incr("py:p").get("py:p").delete("py:p").exists("py:p")
    out["pipeline"] = [text(v) for v in pipe.execute()]
    client = r.client_info()
    out["client"] = {k: str(text(client.get(k))) for k in ("resp", "lib-name", "lib-ver")}
    out["role"] = r.info("replication")["role"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
