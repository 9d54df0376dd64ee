"""A gRPC test server (grpcio, no generated code): service test.Echo with one method of each
kind, on raw bytes. Prints its port, then serves until killed.

- Unary: echoes "echo:<request>"; "fail" aborts with UNAVAILABLE; "sleep:<s>" sleeps first.
- ServerStream: the request is a count n; streams "0" .. "n-1".
- ClientStream: joins the requests with "|".
- Bidi: answers each request with "bidi:<request>".
"""
import sys
import time
from concurrent import futures

import grpc


def unary(req, ctx):
    if req == b"fail":
        ctx.abort(grpc.StatusCode.UNAVAILABLE, "asked to fail")
    if req.startswith(b"sleep:"):
        time.sleep(float(req[6:]))
    return b"echo:" + req


def server_stream(req, ctx):
    for i in range(int(req)):
        yield str(i).encode()


def client_stream(requests, ctx):
    return b"|".join(requests)


def bidi(requests, ctx):
    for m in requests:
        yield b"bidi:" + m


def main():
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    sys.exit(main())
