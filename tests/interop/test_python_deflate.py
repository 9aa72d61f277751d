"""permessage-deflate against Python `websockets`, which negotiates it by default.

Both directions: the `websockets` client against our echo example (`--deflate` in each
mode), and our `echo_client` example against a `websockets` echo server. Messages from
0 bytes to 16 MiB, text and binary, must come back unchanged, over a connection that
negotiated permessage-deflate.

Environment: SWITCHBOARD_ECHO is the echo example's binary; the client is
`echo_client` beside it (or SWITCHBOARD_ECHO_CLIENT).
"""

import asyncio
import os
import socket
import subprocess
import time

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

SIZES = [0, 1, 125, 126, 65535, 65536, 1 << 20, 16 << 20]
ECHO = os.environ.get("SWITCHBOARD_ECHO")
CLIENT = os.environ.get("SWITCHBOARD_ECHO_CLIENT") or (
    ECHO and os.path.join(os.path.dirname(ECHO), "echo_client")
)

pytestmark = pytest.mark.skipif(
    not ECHO, reason="SWITCHBOARD_ECHO (the echo example binary) is not set"
)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def text_of(n):
    """Compressible text with multi-byte characters, exactly n bytes of UTF-8."""
    raw = ("ünïcödé, ascii; " * (n // 8 + 1)).encode()[:n]
    text = raw.decode("utf-8", errors="ignore")
    return text + "x" * (n - len(text.encode()))


def payloads():
    for n in SIZES:
        yield text_of(n)
        yield bytes(i % 13 for i in range(n))


@pytest.fixture(params=["dedicated", "shared"])
def echo_server(request):
    port = free_port()
    proc = subprocess.Popen(
        [ECHO, "--addr", f"127.0.0.1:{port}", "--deflate", request.param,
         "--window-bits", "12", "--threshold", "0"],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("echo server did not start")
            time.sleep(0.05)
    yield request.param, f"ws://127.0.0.1:{port}/"
    proc.terminate()
    proc.wait(timeout=10)


def test_websockets_client_against_our_server(echo_server):
    mode, url = echo_server

    async def run():
        async with connect(url, max_size=None) as ws:
            answer = ws.response.headers["Sec-WebSocket-Extensions"]
            assert answer.startswith("permessage-deflate"), answer
            if mode == "shared":
                assert "server_no_context_takeover" in answer, answer
                assert "client_no_context_takeover" in answer, answer
            for payload in payloads():
                await ws.send(payload)
                assert await ws.recv() == payload, len(payload)

    asyncio.run(run())


@pytest.mark.parametrize("mode", ["dedicated", "shared"])
def test_our_client_against_websockets_server(mode):
    assert CLIENT and os.path.exists(CLIENT), f"no echo_client binary at {CLIENT}"

    async def handler(ws):
        async for message in ws:
            await ws.send(message)

    async def run():
        async with serve(handler, "127.0.0.1", 0, max_size=None) as server:
            port = server.sockets[0].getsockname()[1]
            proc = await asyncio.create_subprocess_exec(
                CLIENT, f"ws://127.0.0.1:{port}/", "--deflate", mode,
                "--sizes", ",".join(map(str, SIZES)),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
            assert proc.returncode == 0, (out.decode(), err.decode())
            answer = out.decode().splitlines()[0]
            assert answer.startswith("permessage-deflate"), answer

    asyncio.run(run())
