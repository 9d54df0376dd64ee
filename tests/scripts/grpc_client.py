"""A gRPC test client (grpcio): calls each method of test.Echo (see grpc_echo.py) at the
target given as the first argument and prints what came back as JSON."""
import json
import sys

import grpc


def main():
    ch = grpc.insecure_channel(sys.argv[1])
    unary = ch.unary_unary("/test.Echo/Unary")
    out = {
        "unary": unary(b"hi", timeout=5).decode(),
        "server_stream": [m.decode() for m in ch.unary_stream("/test.Echo/ServerStream")(b"3", timeout=5)],
        "client_stream": ch.stream_unary("/test.Echo/ClientStream")(iter([b"a", b"b", b"c"]), timeout=5).decode(),
        "bidi": [m.decode() for m in ch.stream_stream("/test.Echo/Bidi")(iter([b"x", b"y"]), timeout=5)],
    }
    for name, req, timeout in [("deadline", b"sleep:3", 1.0), ("fail", b"fail", 5)]:
        try:
            unary(req, timeout=timeout)
            out[name] = ["OK", ""]
        except grpc.RpcError as e:
            out[name] = [e.code().name, e.details()]
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
