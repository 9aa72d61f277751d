"""Starts the echo example (built in release) for the interop tests.

The binary's path comes from SWITCHBOARD_ECHO; scripts/test sets it after
`cargo build --release --examples -p switchboard --features tls`
(the TLS tests start the chat example with `--tls-cert`).
"""

import os
import socket
import subprocess
import time

import pytest

STARTUP_TIMEOUT = 10.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(process: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read().decode(errors="replace")
            pytest.fail(f"echo server exited with {process.returncode}: {output}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"echo server did not listen on port {port} within {STARTUP_TIMEOUT} s")


@pytest.fixture(scope="session")
def echo_addr():
    """(host, port) of a running echo example; stopped when the session ends."""
    binary = os.environ.get("SWITCHBOARD_ECHO")
    if not binary:
        pytest.fail(
            "SWITCHBOARD_ECHO is not set: run `cargo build --release --examples -p "
            "switchboard` and set it to target/release/examples/echo"
        )
    if not os.access(binary, os.X_OK):
        pytest.fail(f"SWITCHBOARD_ECHO={binary} is not an executable file")
    port = _free_port()
    process = subprocess.Popen(
        [binary, "--addr", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for_port(process, port)
        yield ("127.0.0.1", port)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def echo_url(echo_addr):
    host, port = echo_addr
    return f"ws://{host}:{port}/"
