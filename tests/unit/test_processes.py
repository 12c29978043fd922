"""Several gateway processes on one port (IMGQ_GATEWAY_PROCESSES): the setting and the sockets
(a gateway of two processes on a real broker: tests/service/test_processes.py)."""

from __future__ import annotations

import socket
import time

import pytest

from compose.broker import free_port
from gateway.process_count import MAX_PROCESSES, processes_from_env
from gateway.processes import listening_sockets
from shared.errors import SettingsError


def test_the_setting_is_one_by_default_and_several_need_linux_and_a_fixed_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert processes_from_env({}, 8080) == 1
    assert processes_from_env({"IMGQ_GATEWAY_PROCESSES": "4"}, 8080) == 4
    for bad in ("0", "-1", "two", str(MAX_PROCESSES + 1)):
        with pytest.raises(SettingsError, match="IMGQ_GATEWAY_PROCESSES"):
            processes_from_env({"IMGQ_GATEWAY_PROCESSES": bad}, 8080)
    with pytest.raises(SettingsError, match="fixed IMGQ_HTTP_PORT"):
        processes_from_env({"IMGQ_GATEWAY_PROCESSES": "2"}, 0)
    assert processes_from_env({"IMGQ_GATEWAY_PROCESSES": "1"}, 0) == 1
    monkeypatch.setattr("sys.platform", "darwin")
    with pytest.raises(SettingsError, match="needs Linux"):
        processes_from_env({"IMGQ_GATEWAY_PROCESSES": "2"}, 8080)


def test_each_process_gets_sockets_of_its_own_on_the_same_port() -> None:
    port = free_port()
    first = listening_sockets("127.0.0.1", port)
    second = listening_sockets("127.0.0.1", port)
    try:
        assert [s.getsockname() for s in first] == [s.getsockname() for s in second]
        # Both accept: the kernel hands each new connection to one of them.
        accepted: set[int] = set()
        for sock in (*first, *second):
            sock.setblocking(True)
            sock.settimeout(0.2)
        deadline = time.monotonic() + 30
        while len(accepted) < 2:
            assert time.monotonic() < deadline, "the connections all went to one socket"
            with socket.create_connection(("127.0.0.1", port)):
                for index, sock in enumerate((*first, *second)):
                    try:
                        conn, _ = sock.accept()
                    except TimeoutError:
                        continue
                    conn.close()
                    accepted.add(index)
                    break
    finally:
        for sock in (*first, *second):
            sock.close()
    # A port another program holds without SO_REUSEPORT cannot be had: the supervisor fails
    # at once instead of forking processes that cannot serve.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError, match="in use"):
            listening_sockets("127.0.0.1", taken.getsockname()[1])
