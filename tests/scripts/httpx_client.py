"""An HTTP test client (httpx): talks HTTP/1.1 and then HTTP/2 with prior knowledge (h2c) to
the address given as the first argument, and prints what came back as JSON. The upstream
behind it is the harness's HTTP upstream, which answers with a JSON description of each
request it received."""
import json
import sys

import httpx


def described(r):
    j = r.json()
    return {
        "status": r.status_code,
        "version": r.http_version,
        "server": j["server"],
        "path": j["path"],
        "method": j["method"],
        "body_len": j["body_len"],
        "request_id": "x-request-id" in j["headers"],
        "te": j["headers"].get("transfer-encoding"),
        "host": j["headers"].get("host"),
    }


def chunks():
    for _ in range(10):
        yield b"y" * 1000


def session(client, tag):
    out = {}
    out["gets"] = [described(client.get(f"/{tag}/{i}?q=1", headers={"x-from": "httpx"})) for i in range(5)]
    out["post"] = described(client.post(f"/{tag}/post", content=b"x" * 100_000))
    out["streamed"] = described(client.post(f"/{tag}/streamed", content=chunks()))
    missing = client.get(f"/nowhere/{tag}")
    out["missing"] = [missing.status_code, missing.http_version, missing.text]
    return out


def main():
    base = f"http://{sys.argv[1]}"
    out = {}
    with httpx.Client(base_url=base, timeout=10) as c:
        out["http1"] = session(c, "h1")
    with httpx.Client(base_url=base, timeout=10, http1=False, http2=True) as c:
        out["http2"] = session(c, "h2")
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
