"""TLS (`wss://`) against Python's ssl module, with certificates made here by `trustme`
(a throwaway CA and a server certificate for localhost and 127.0.0.1).

Both directions: Python `websockets` against the chat example started with
`--tls-cert/--tls-key`, and our `echo_client` example (`--ca`) against a `websockets`
server on an ssl context. Each fails if either side stops speaking TLS or stops
checking the certificate.

Environment: SWITCHBOARD_CHAT is the chat example's binary and SWITCHBOARD_ECHO the
echo example's (the client is `echo_client` beside it, or SWITCHBOARD_ECHO_CLIENT), all
built with `--features tls`.
"""

import asyncio
import json
import os
import ssl
import subprocess

import pytest
import trustme
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

from conftest import _free_port, _wait_for_port

TIMEOUT = 20.0
CHAT = os.environ.get("SWITCHBOARD_CHAT") or (
    os.environ.get("SWITCHBOARD_ECHO")
    and os.path.join(os.path.dirname(os.environ["SWITCHBOARD_ECHO"]), "chat")
)
ECHO = os.environ.get("SWITCHBOARD_ECHO")
CLIENT = os.environ.get("SWITCHBOARD_ECHO_CLIENT") or (
    ECHO and os.path.join(os.path.dirname(ECHO), "echo_client")
)


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, TIMEOUT))


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def server_cert(ca):
    return ca.issue_cert("localhost", "127.0.0.1")


@pytest.fixture(scope="module")
def chat_tls(ca, server_cert, tmp_path_factory):
    """(port, client ssl context) of the chat example serving https/wss."""
    assert CHAT and os.access(CHAT, os.X_OK), f"no chat binary at {CHAT}: set SWITCHBOARD_CHAT"
    files = tmp_path_factory.mktemp("tls")
    cert, key = files / "cert.pem", files / "key.pem"
    server_cert.cert_chain_pems[0].write_to_path(str(cert))
    for extra in server_cert.cert_chain_pems[1:]:
        extra.write_to_path(str(cert), append=True)
    server_cert.private_key_pem.write_to_path(str(key))
    port = _free_port()
    process = subprocess.Popen(
        [CHAT, "--addr", f"127.0.0.1:{port}", "--tls-cert", str(cert), "--tls-key", str(key)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for_port(process, port)
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        ca.configure_trust(context)
        yield port, context
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_websockets_talks_to_the_chat_example_over_wss(chat_tls):
    port, context = chat_tls

    async def main():
        url = f"wss://localhost:{port}/chat/tls?name=py"
        async with connect(url, ssl=context) as ws:
            assert ws.transport.get_extra_info("ssl_object") is not None
            welcome = json.loads(await ws.recv())
            assert welcome["type"] == "welcome" and welcome["user"] == "py", welcome
            await ws.send("over tls " + "é" * 20_000)
            echoed = json.loads(await ws.recv())
            assert echoed["type"] == "message", echoed
            assert echoed["body"] == "over tls " + "é" * 20_000

    run(main())


def test_the_chat_page_comes_over_https(chat_tls):
    port, context = chat_tls

    async def main():
        reader, writer = await asyncio.open_connection(
            "localhost", port, ssl=context, server_hostname="localhost"
        )
        writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        body = await reader.read()
        writer.close()
        return body

    response = run(main())
    assert response.startswith(b"HTTP/1.1 200 "), response[:200]
    assert b"switchboard chat" in response


def test_the_chat_example_speaks_no_plaintext_on_its_tls_port(chat_tls):
    port, _ = chat_tls

    async def main():
        async with connect(f"ws://localhost:{port}/chat/tls", open_timeout=5):
            pass

    with pytest.raises(Exception):
        run(main())


def test_an_untrusted_certificate_is_refused_by_websockets(chat_tls):
    port, _ = chat_tls
    # Another CA: the chat server's certificate does not chain to it.
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    trustme.CA().configure_trust(context)

    async def main():
        async with connect(f"wss://localhost:{port}/chat/tls", ssl=context):
            pass

    with pytest.raises(ssl.SSLCertVerificationError):
        run(main())


def _echo_server_context(server_cert):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(context)
    return context


async def _our_client_against(server_cert, ca_pem_path, host):
    """Runs `echo_client` against a `websockets` echo server on TLS; (code, out, err)."""

    async def handler(ws):
        async for message in ws:
            await ws.send(message)

    context = _echo_server_context(server_cert)
    async with serve(handler, "127.0.0.1", 0, ssl=context, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            CLIENT, f"wss://{host}:{port}/", "--ca", str(ca_pem_path),
            "--deflate", "off", "--sizes", "0,1,125,65536,1048576",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=TIMEOUT)
        return proc.returncode, out.decode(), err.decode()


def test_our_client_against_a_websockets_tls_server(ca, server_cert, tmp_path):
    assert CLIENT and os.path.exists(CLIENT), f"no echo_client binary at {CLIENT}"
    ca_pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    for host in ["localhost", "127.0.0.1"]:
        code, out, err = asyncio.run(_our_client_against(server_cert, ca_pem, host))
        assert code == 0, (host, out, err)
        assert out.splitlines()[-1] == "1048576 ok", out


def test_our_client_refuses_a_server_it_does_not_trust(server_cert, tmp_path):
    assert CLIENT and os.path.exists(CLIENT), f"no echo_client binary at {CLIENT}"
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    code, out, err = asyncio.run(_our_client_against(server_cert, other_ca, "localhost"))
    assert code != 0, out
    # The example prints the error's Debug form: `Error: Tls(...)`.
    assert "Tls(" in err, err
