"""A container engine on another host, reached as Docker's `--tlsverify` reaches one: this machine's
Podman (which has no TLS of its own, in this version) behind a front that speaks TLS and asks
every client for a certificate of its CA, as `dockerd --tlsverify --tlscacert` does.

    python -m tests.containers.tls_engine --listen HOST:PORT --cert C --key K --ca CA --to SOCKET

prints `LISTENING <port>` once it listens. Certificates are made with the openssl command line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certificates:
    folder: Path
    ca: Path  # what both sides check the other against
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path  # a client certificate of another CA
    rogue_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _key_and_request(folder: Path, name: str) -> None:
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=folder,
    )  # fmt: skip


def _authority(folder: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
        cwd=folder,
    )  # fmt: skip


def _signed(folder: Path, name: str, authority: str, extensions: str) -> None:
    _key_and_request(folder, name)
    (folder / f"{name}.ext").write_text(extensions)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{authority}.pem", "-CAkey", f"{authority}.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=folder,
    )  # fmt: skip


def make_certificates(folder: Path, server_address: str) -> Certificates:
    folder.mkdir(parents=True, exist_ok=True)
    _authority(folder, "ca")
    _authority(folder, "rogue-ca")
    _signed(folder, "server", "ca", f"subjectAltName=IP:{server_address}\nextendedKeyUsage=serverAuth\n")
    _signed(folder, "client", "ca", "extendedKeyUsage=clientAuth\n")
    _signed(folder, "rogue", "rogue-ca", "extendedKeyUsage=clientAuth\n")
    for key in folder.glob("*.key"):
        key.chmod(0o600)
    return Certificates(
        folder,
        folder / "ca.pem",
        folder / "server.pem",
        folder / "server.key",
        folder / "client.pem",
        folder / "client.key",
        folder / "rogue.pem",
        folder / "rogue.key",
    )


def tls_options(certificates: Certificates, url: str, rogue: bool = False) -> dict[str, str]:
    """A docker provider's options for the engine behind the front (with `rogue`, another CA's client)."""
    cert, key = certificates.client_cert, certificates.client_key
    if rogue:
        cert, key = certificates.rogue_cert, certificates.rogue_key
    return {"url": url, "tls_ca": str(certificates.ca), "tls_cert": str(cert), "tls_key": str(key)}


@contextlib.contextmanager
def front(certificates: Certificates, listen: str, to: str, command: list[str] | None = None) -> Iterator[int]:
    """The front, running (as `command` prefixes it: e.g. in a network namespace); yields its port."""
    argv = [sys.executable, "-m", "tests.containers.tls_engine", "--listen", listen, "--to", to]
    argv += ["--cert", str(certificates.server_cert), "--key", str(certificates.server_key)]
    argv += ["--ca", str(certificates.ca)]
    process = subprocess.Popen(
        [*(command or []), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("LISTENING "):
            raise RuntimeError(f"the TLS front did not start: {line}{process.stdout.read()[:2000]}")
        yield int(line.split()[1])
    finally:
        process.terminate()
        process.wait(timeout=10)


async def serve(listen: str, to: str, context: ssl.SSLContext) -> None:
    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_unix_connection(to)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer), return_exceptions=True)

    host, port = listen.rsplit(":", 1)
    server = await asyncio.start_server(handle, host, int(port), ssl=context)
    print(f"LISTENING {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    for option in ("--listen", "--to", "--cert", "--key", "--ca"):
        parser.add_argument(option, required=True)
    args = parser.parse_args()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=args.ca)
    context.verify_mode = ssl.CERT_REQUIRED  # no certificate of the CA, no engine
    context.load_cert_chain(args.cert, args.key)
    asyncio.run(serve(args.listen, args.to, context))


if __name__ == "__main__":
    main()
