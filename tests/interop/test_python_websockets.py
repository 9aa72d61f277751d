"""Python `websockets` (15.x), an implementation nobody here wrote, against the echo
example: messages of every size, fragments, pings, the close handshake, invalid UTF-8,
a refused handshake, and a permessage-deflate offer that the server must decline.

Run: SWITCHBOARD_ECHO=target/release/examples/echo python -m pytest -q tests/interop
"""

import asyncio
import os
import struct

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

# Every step of a test must finish well within this.
TIMEOUT = 20.0

SIZES = [0, 1, 125, 126, 65535, 65536, 16 << 20]

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, TIMEOUT))


def text_of(size: int) -> str:
    """Exactly `size` bytes of UTF-8 with two-byte characters in it."""
    return "é" * (size // 2) + "x" * (size % 2)


def binary_of(size: int) -> bytes:
    """`size` bytes that are not all the same."""
    return (bytes(range(251)) * (size // 251 + 1))[:size]


# --- a raw client, to send what `websockets` refuses to send ---


def handshake(path: str = "/", version: str = "13", key: str = KEY) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: {version}\r\n\r\n"
    ).encode()


async def read_response(reader: asyncio.StreamReader):
    """The status and the headers (names lowercased) of a response head."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ")[1])
    headers = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return status, headers


def masked_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    key = os.urandom(4)
    head = bytes([(0x80 if fin else 0) | opcode])
    if len(payload) < 126:
        head += bytes([0x80 | len(payload)])
    elif len(payload) < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", len(payload))
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


async def read_frame(reader: asyncio.StreamReader):
    """(fin, opcode, payload) of an unmasked frame from the server."""
    first, second = await reader.readexactly(2)
    assert second & 0x80 == 0, "a server must not mask its frames"
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    return bool(first & 0x80), first & 0x0F, await reader.readexactly(length)


async def raw_connect(addr):
    reader, writer = await asyncio.open_connection(*addr)
    writer.write(handshake())
    await writer.drain()
    status, headers = await read_response(reader)
    assert status == 101
    assert headers["sec-websocket-accept"] == ACCEPT
    return reader, writer


# --- messages ---


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", ["text", "binary"])
def test_messages_of_every_size_are_echoed(echo_url, size, kind):
    message = text_of(size) if kind == "text" else binary_of(size)
    assert len(message.encode() if kind == "text" else message) == size

    async def main():
        async with connect(echo_url, max_size=None) as ws:
            await ws.send(message)
            echoed = await ws.recv()
            assert type(echoed) is type(message)
            assert echoed == message

    run(main())


def test_fragmented_messages_are_reassembled(echo_url):
    async def main():
        async with connect(echo_url) as ws:
            await ws.send(["κό", "σμ", "", "ε"])
            assert await ws.recv() == "κόσμε"
            await ws.send([b"\x00\x01", b"\x02", b"\xff"])
            assert await ws.recv() == b"\x00\x01\x02\xff"

    run(main())


def test_pings_are_answered_in_the_middle_of_a_fragmented_message(echo_url):
    async def main():
        async with connect(echo_url) as ws:

            async def fragments():
                yield "first "
                # The server must answer before the message is finished.
                await asyncio.wait_for(await ws.ping(b"mid-1"), 5)
                yield "second "
                await asyncio.wait_for(await ws.ping(b"mid-2"), 5)
                yield "third"

            await ws.send(fragments())
            assert await ws.recv() == "first second third"

    run(main())


@pytest.mark.parametrize(
    "payload", [b"data", b"", bytes(range(125))], ids=["data", "empty", "125-bytes"]
)
def test_a_ping_is_answered_with_a_pong_of_the_same_payload(echo_url, payload):
    async def main():
        async with connect(echo_url) as ws:
            # websockets resolves the waiter only on a pong carrying this payload.
            latency = await asyncio.wait_for(await ws.ping(payload), 5)
            assert latency >= 0

    run(main())


def test_a_raw_ping_gets_its_payload_back(echo_addr):
    async def main():
        reader, writer = await raw_connect(echo_addr)
        writer.write(masked_frame(0x9, b"raw ping"))
        await writer.drain()
        assert await read_frame(reader) == (True, 0xA, b"raw ping")
        writer.close()

    run(main())


# --- the close handshake ---


@pytest.mark.parametrize(
    ("code", "reason"), [(1000, ""), (1000, "bye"), (4000, "done here"), (4999, "αντίο")]
)
def test_the_server_echoes_the_close_code(echo_url, code, reason):
    async def main():
        async with connect(echo_url) as ws:
            await ws.send("before closing")
            assert await ws.recv() == "before closing"
            await ws.close(code, reason)
            # The code and reason received from the server: its echo of ours.
            assert ws.close_code == code
            assert ws.close_reason == reason
            assert ws.protocol.close_rcvd.code == code
            # websockets calls only 1000 and 1001 "OK".
            expected = ConnectionClosedOK if code == 1000 else ConnectionClosed
            with pytest.raises(expected) as closed:
                await ws.recv()
            assert closed.value.rcvd.code == code
            assert closed.value.rcvd.reason == reason

    run(main())


def test_invalid_utf8_closes_with_1007(echo_addr):
    async def main():
        reader, writer = await raw_connect(echo_addr)
        # "κ" and then a byte that can never appear in UTF-8.
        writer.write(masked_frame(0x1, b"\xce\xba\xff"))
        await writer.drain()
        fin, opcode, payload = await read_frame(reader)
        assert (fin, opcode) == (True, 0x8)
        assert struct.unpack("!H", payload[:2])[0] == 1007
        payload[2:].decode()  # the reason is UTF-8 too
        # The server then closes the connection.
        assert await reader.read() == b""
        writer.close()

    run(main())


def test_invalid_utf8_across_fragments_closes_with_1007(echo_addr):
    async def main():
        reader, writer = await raw_connect(echo_addr)
        # A valid start of a character, continued by a byte that cannot continue it.
        writer.write(masked_frame(0x1, b"ok \xe2\x82", fin=False))
        writer.write(masked_frame(0x0, b"\x41", fin=True))
        await writer.drain()
        fin, opcode, payload = await read_frame(reader)
        assert (fin, opcode) == (True, 0x8)
        assert struct.unpack("!H", payload[:2])[0] == 1007
        writer.close()

    run(main())


# --- the opening handshake ---


@pytest.mark.parametrize(
    ("request_bytes", "status", "header"),
    [
        (handshake(version="8"), 426, ("sec-websocket-version", "13")),
        (handshake(key="c2hvcnQ="), 400, None),
        (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 405, ("allow", "GET")),
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 426, ("upgrade", "websocket")),
    ],
    ids=["version-8", "short-key", "post", "plain-get"],
)
def test_a_bad_handshake_is_refused(echo_addr, request_bytes, status, header):
    async def main():
        reader, writer = await asyncio.open_connection(*echo_addr)
        writer.write(request_bytes)
        await writer.drain()
        got, headers = await read_response(reader)
        assert got == status
        if header is not None:
            name, value = header
            assert headers[name] == value
        body = await reader.readexactly(int(headers["content-length"]))
        assert body, "the refusal says why"
        assert await reader.read() == b"", "the server closes after refusing"
        writer.close()

    run(main())


def test_permessage_deflate_is_declined_and_messages_still_flow(echo_url):
    text = "compressible " * 10_000
    binary = b"\x00" * 100_000

    async def main():
        # websockets offers permessage-deflate unless told not to.
        async with connect(echo_url, max_size=None) as ws:
            assert "permessage-deflate" in ws.request.headers["Sec-WebSocket-Extensions"]
            assert "Sec-WebSocket-Extensions" not in ws.response.headers
            assert ws.protocol.extensions == []
            for message in [text, binary, "small"]:
                await ws.send(message)
                assert await ws.recv() == message

    run(main())
