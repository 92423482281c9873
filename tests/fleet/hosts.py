"""Other machines, made for a test: network namespaces, each linked to this one by a veth pair of
its own (a /30 of 10.213.0.0/16), with no route to any other; removed when the test ends."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

NEEDS = "network namespaces need root and iproute2 (`ip`)"


def require_namespaces() -> None:
    if os.geteuid() == 0 and shutil.which("ip"):
        return
    if os.environ.get("CI"):
        pytest.fail(f"{NEEDS}; CI is set, so this does not skip")
    pytest.skip(NEEDS)


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


@dataclass(frozen=True)
class Host:
    namespace: str
    address: str  # the host's own address, on its link
    gateway: str  # this machine's address on that link: where the host reaches the control plane
    link: str  # this machine's end of the link

    def cut(self) -> None:
        """The link goes dead: nothing passes, and neither end's TCP is told."""
        ip("link", "set", self.link, "down")

    def restore(self) -> None:
        ip("link", "set", self.link, "up")

    def command(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *args]

    def run(self, *args: str) -> str:
        return subprocess.run(self.command(*args), check=True, capture_output=True, text=True).stdout

    def listening(self) -> list[str]:
        """Local addresses of its listening TCP sockets."""
        return [line.split()[3] for line in self.run("ss", "-ltnH").splitlines() if line.strip()]

    def connections(self) -> list[tuple[str, str]]:
        """(local, peer) of its established TCP connections."""
        lines = self.run("ss", "-tnH", "state", "established").splitlines()
        return [(line.split()[2], line.split()[3]) for line in lines if line.strip()]


@contextlib.contextmanager
def hosts(count: int) -> Iterator[list[Host]]:
    require_namespaces()
    tag = f"{random.randrange(16**4):04x}"
    made: list[Host] = []
    try:
        for n in range(count):
            link = random.randrange(2**14) * 4  # a /30 of 10.213.0.0/16: .1 this machine, .2 the host
            prefix = f"10.213.{link // 256}."
            gateway, address = f"{prefix}{link % 256 + 1}", f"{prefix}{link % 256 + 2}"
            name, outer, inner = f"infx-{tag}-{n}", f"ifx{tag}{n}a", f"ifx{tag}{n}b"
            ip("netns", "add", name)
            made.append(Host(name, address, gateway, outer))
            ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            ip("link", "set", inner, "netns", name)
            ip("addr", "add", f"{gateway}/30", "dev", outer)
            ip("link", "set", outer, "up")
            ip("netns", "exec", name, "ip", "addr", "add", f"{address}/30", "dev", inner)
            ip("netns", "exec", name, "ip", "link", "set", inner, "up")
            ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield made
    finally:
        for host in made:
            with contextlib.suppress(subprocess.CalledProcessError):
                ip("netns", "del", host.namespace)  # and its end of the link, and so the other end


@contextlib.asynccontextmanager
async def forwarded(addresses: list[str], port: int, to: tuple[str, int]) -> AsyncIterator[None]:
    """This machine's `to` (a server that listens on loopback only: PostgreSQL, RabbitMQ) offered
    on `port` of each of these addresses, as a database host on the network would be."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def carry(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*to)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    servers = [await asyncio.start_server(carry, address, port) for address in addresses]
    try:
        yield
    finally:
        for server in servers:
            server.close()


def kill_everything_in(host: Host) -> None:
    """What losing the machine does: every process of its network namespace killed at once."""
    for pid in ip("netns", "pids", host.namespace).split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
