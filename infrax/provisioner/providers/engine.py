"""Where a `docker` provider's engine is, and how it is reached without handing anyone root.

A `unix://` engine is this host's. A `tcp://` engine is another host's, and Docker's API gives
whoever reaches it root on that host: it is reached over TLS with a client certificate
(`tls_ca`: the CA the engine's certificate is checked against, `tls_cert` and `tls_key`: this
provisioner's certificate, as `docker --tlsverify` takes them), or, only where the configuration
says `insecure_tcp: true` (a network nobody else is on), in plain TCP.

The agent of a container on a remote engine has no port: it listens on a socket file inside its
container, and a connection to it is a `docker exec` of a small bridge to that socket, carried on
the engine's own (TLS) connection (`open_exec`).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import ssl
import struct
import tarfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.tls

API_VERSION = "1.41"
FRAME = struct.Struct(">BxxxI")  # a multiplexed stream's frame: stream (1 stdout, 2 stderr), size
STDOUT = 1
CHUNK = 64 * 1024

# Run inside the container (only python3 is sure to be there): stdin to the agent's socket, the
# agent's answers to stdout, until either side ends.
BRIDGE = """import os, socket, sys, threading
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
def up():
    while data := os.read(0, 65536):
        s.sendall(data)
    s.shutdown(socket.SHUT_WR)
threading.Thread(target=up, daemon=True).start()
out = sys.stdout.buffer
while data := s.recv(65536):
    out.write(data)
    out.flush()
"""


class EngineError(Exception):
    """The engine refused, or could not be reached; the message says which and why."""


@dataclass(frozen=True)
class Engine:
    url: str
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    insecure_tcp: bool = False

    @classmethod
    def from_options(cls, options: dict[str, Any], default_url: str) -> Engine:
        """The engine of a provider's options; a setting that cannot be safe is a ValueError naming it."""
        url = str(options.get("url") or default_url)
        tls = {key: options.get(key) for key in ("tls_ca", "tls_cert", "tls_key")}
        given = {key: str(value) for key, value in tls.items() if value}
        engine = cls(url, insecure_tcp=bool(options.get("insecure_tcp")), **given)
        if url.startswith("unix://"):
            if given:
                raise ValueError(f"{', '.join(sorted(given))}: only for a tcp:// engine, not {url}")
            return engine
        if not url.startswith("tcp://") or not urllib.parse.urlsplit(url).port:
            raise ValueError(f"engine url {url!r} must be unix:///path or tcp://host:port")
        if given and len(given) < 3:
            missing = sorted(set(tls) - set(given))
            raise ValueError(f"TLS to {url} needs tls_ca, tls_cert and tls_key; missing {', '.join(missing)}")
        if not given and not engine.insecure_tcp:
            raise ValueError(
                f"{url} without TLS gives whoever reaches that port root on its host: give tls_ca, tls_cert "
                "and tls_key (the engine's CA, a client certificate and its key), or insecure_tcp: true"
            )
        for key, path in given.items():
            if not Path(path).is_file():
                raise ValueError(f"{key}: no such file {path}")
        return engine

    @property
    def remote(self) -> bool:
        return self.url.startswith("tcp://")

    @property
    def tls(self) -> bool:
        return self.tls_ca is not None

    def client(self, timeout: int = 60, max_pool_size: int = 10) -> docker.DockerClient:
        # An explicit API version: constructing the client makes no request.
        tls: bool | docker.tls.TLSConfig = False
        if self.tls:
            assert self.tls_cert is not None and self.tls_key is not None
            tls = docker.tls.TLSConfig(client_cert=(self.tls_cert, self.tls_key), ca_cert=self.tls_ca, verify=True)
        client = docker.DockerClient(
            base_url=self.url, version=API_VERSION, timeout=timeout, max_pool_size=max_pool_size, tls=tls
        )
        # requests lets REQUESTS_CA_BUNDLE (set on many hosts) replace the engine's CA given here.
        client.api.trust_env = False
        return client

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.tls_ca)
        assert self.tls_cert is not None and self.tls_key is not None
        context.load_cert_chain(self.tls_cert, self.tls_key)
        return context

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if not self.remote:
            return await asyncio.open_unix_connection(self.url.removeprefix("unix://"))
        parts = urllib.parse.urlsplit(self.url)
        host, port = parts.hostname or "", parts.port or 0
        if self.tls:
            return await asyncio.open_connection(host, port, ssl=self.ssl_context(), server_hostname=host)
        return await asyncio.open_connection(host, port)

    async def open_exec(self, exec_id: str) -> tuple[ExecOutput, asyncio.StreamWriter]:
        """Start an exec created with stdin attached and no TTY, hijacking the connection: what is
        written goes to its stdin; `ExecOutput` reads its stdout out of the multiplexed stream."""
        reader, writer = await self.connect()
        try:
            body = json.dumps({"Detach": False, "Tty": False}).encode()
            head = (
                f"POST /v{API_VERSION}/exec/{exec_id}/start HTTP/1.1\r\nHost: docker\r\n"
                "Content-Type: application/json\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
            answer = await reader.readuntil(b"\r\n\r\n")
            status = answer.split(b"\r\n", 1)[0].decode(errors="replace")
            if len(status.split()) < 2 or status.split()[1] not in ("101", "200"):
                said = (await asyncio.wait_for(reader.read(2000), 5)).decode(errors="replace")
                raise EngineError(f"the engine refused to start exec {exec_id}: {status} {said.strip()}")
        except BaseException:
            writer.close()
            raise
        return ExecOutput(reader), writer


class ExecOutput:
    """The stdout of a hijacked exec, its frames taken apart (stderr is dropped)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader

    async def read(self) -> bytes:
        """The next piece of stdout; b"" at its end."""
        while True:
            try:
                stream, size = FRAME.unpack(await self.reader.readexactly(FRAME.size))
                data = await self.reader.readexactly(size)
            except asyncio.IncompleteReadError:
                return b""
            if stream == STDOUT and data:
                return data


async def carry(engine: Engine, exec_id: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One connection to a container's agent through the engine, until either side ends it."""
    with contextlib.closing(writer):
        try:
            output, stdin = await engine.open_exec(exec_id)
        except (OSError, EngineError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        with contextlib.closing(stdin):

            async def up() -> None:
                while data := await reader.read(CHUNK):
                    stdin.write(data)
                    await stdin.drain()

            async def down() -> None:
                while data := await output.read():
                    writer.write(data)
                    await writer.drain()

            tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
            with contextlib.suppress(OSError, ConnectionError):
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def secret_archive(folder: str, name: str, secret: str) -> bytes:
    """A tar of `folder` (0700) holding the secret (0400), both root's, for `put_archive` at the
    folder's parent before the container starts: its agent reads the file, then removes it."""
    data = secret.encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        directory = tarfile.TarInfo(Path(folder).name)
        directory.type, directory.mode = tarfile.DIRTYPE, 0o700
        tar.addfile(directory)
        file = tarfile.TarInfo(f"{Path(folder).name}/{name}")
        file.mode, file.size = 0o400, len(data)
        tar.addfile(file, io.BytesIO(data))
    return buffer.getvalue()
