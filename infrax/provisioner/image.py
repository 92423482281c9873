"""The agent's container image, built here without any registry.

Two layers, both kept in the engine's image store:

* the base, ``localhost/infrax-agent-base:bookworm``: a Debian root filesystem made with
  ``debootstrap --variant=minbase --include=python3,git,mercurial,python3-pytest`` from the apt mirror this machine
  already uses, imported through the Engine API (about a minute, once per engine);
* the agent image, ``localhost/infrax-agent:<hash>``: the base plus the agent's source
  (``infrax/__init__.py`` and ``infrax/agent/*.py``), built through the Engine API from a tar
  context (under a second). The tag is a hash of those files and of the recipe, so an image
  built from stale source is never used: changing the agent makes a new tag.

Blocking functions (the Docker SDK is synchronous); the provider calls them in a thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import docker.errors
import requests

log = logging.getLogger(__name__)

# The tag names what is in it: a base built before Mercurial and pytest were is never taken for this one.
BASE_IMAGE = "localhost/infrax-agent-base:bookworm-git-hg-pytest"
AGENT_REPOSITORY = "localhost/infrax-agent"
SUITE = "bookworm"
# What a checkout needs (git, Mercurial) and what a bootstrapper that only runs `python3 -m pytest` does.
PACKAGES = ("python3", "git", "mercurial", "python3-pytest")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds infrax/

# No RUN step but the byte-compilation: the image must build on any engine without a registry.
DOCKERFILE = f"""\
FROM {BASE_IMAGE}
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 PYTHONPATH=/opt/infrax
COPY infrax /opt/infrax/infrax
RUN python3 -m compileall -q /opt/infrax/infrax
WORKDIR /work
CMD ["python3", "-m", "infrax.agent", "--host", "0.0.0.0", "--port", "8000", "--workdir", "/work"]
"""


class ImageError(Exception):
    """The image could not be built; the message says which step failed and why."""


def agent_files() -> list[tuple[str, Path]]:
    """(path in the image's /opt/infrax, file on disk) of everything the agent needs."""
    files = [("infrax/__init__.py", _PACKAGE_ROOT / "infrax" / "__init__.py")]
    agent = _PACKAGE_ROOT / "infrax" / "agent"
    files += [(f"infrax/agent/{p.name}", p) for p in sorted(agent.glob("*.py"))]
    return files


def agent_image_ref() -> str:
    """The agent image's reference for the source as it is now on disk."""
    digest = hashlib.sha256(DOCKERFILE.encode())
    for name, path in agent_files():
        content = path.read_bytes()
        digest.update(f"\0{name}\0{len(content)}\0".encode())
        digest.update(content)
    return f"{AGENT_REPOSITORY}:{digest.hexdigest()[:12]}"


def ensure_agent_image(docker_url: str, connect: Callable[..., docker.DockerClient] | None = None) -> str:
    """The agent image's reference, building it (and the base) only when the engine lacks it.
    `connect(timeout=…)`: the engine's client, where reaching it takes more than its URL (TLS)."""
    return build_agent_image(docker_url, force=False, connect=connect)


def build_agent_image(
    docker_url: str, force: bool = False, connect: Callable[..., docker.DockerClient] | None = None
) -> str:
    """Build what is missing (with `force`, the base and the agent image anew); return the image ref."""
    ref = agent_image_ref()
    client = connect(timeout=600) if connect is not None else _client(docker_url)
    try:
        if not force and _has_image(client, ref):
            return ref
        # Several test sessions or provisioners may ask at once; one builds, the others then find it.
        with _build_lock(docker_url):
            if force or not _has_image(client, BASE_IMAGE):
                build_base_image(client)
            if force or not _has_image(client, ref):
                _build_agent(client, ref)
        return ref
    except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
        raise ImageError(f"cannot build {ref} on {docker_url}: {error}") from error
    finally:
        client.close()


def build_base_image(client: docker.DockerClient, mirror: str | None = None) -> None:
    """debootstrap a minimal bookworm with PACKAGES here, then import it as BASE_IMAGE."""
    if shutil.which("debootstrap") is None:
        raise ImageError("debootstrap is not installed (scripts/setup-podman.sh installs it)")
    mirror = mirror or apt_mirror()
    scratch = Path(tempfile.mkdtemp(prefix="infrax-rootfs-", dir=os.environ.get("INFRAX_BUILD_DIR", "/var/tmp")))
    rootfs = scratch / "rootfs"
    try:
        log.info("debootstrap %s from %s into %s (about a minute)", SUITE, mirror, rootfs)
        result = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(rootfs), mirror],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            tail = "\n".join(result.stdout.splitlines()[-15:])
            raise ImageError(f"debootstrap {SUITE} from {mirror} failed (exit {result.returncode}):\n{tail}")
        _trim(rootfs)
        tar = subprocess.Popen(
            ["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        assert tar.stdout is not None
        try:
            # "repo:tag" in one argument: Podman ignores a separate `tag` on import, Docker accepts both.
            client.api.import_image(src=tar.stdout, repository=BASE_IMAGE, stream_src=True)
        finally:
            tar.stdout.close()
            if tar.wait() != 0:
                raise ImageError(f"tar of {rootfs} failed (exit {tar.returncode})")
        if not _has_image(client, BASE_IMAGE):
            raise ImageError(f"the engine accepted the root filesystem but has no image {BASE_IMAGE} afterwards")
        log.info("imported %s", BASE_IMAGE)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def apt_mirror() -> str:
    """The Debian mirror apt uses here (deb822 sources first, then sources.list)."""
    deb822 = Path("/etc/apt/sources.list.d/debian.sources")
    with contextlib.suppress(OSError):
        for line in deb822.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    with contextlib.suppress(OSError):
        for line in Path("/etc/apt/sources.list").read_text().splitlines():
            words = line.split()
            if len(words) >= 3 and words[0] == "deb" and "security" not in words[-3]:
                return next(w for w in words[1:] if "://" in w)
    return DEFAULT_MIRROR


def _trim(rootfs: Path) -> None:
    """Drop what a CI container never reads: downloaded packages, apt lists, docs, translations."""
    for folder in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
        target = rootfs / folder
        if target.is_dir():
            for child in target.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                elif child.name != "lock":
                    child.unlink(missing_ok=True)
    for mo in (rootfs / "usr/share/locale").rglob("*.mo"):
        mo.unlink(missing_ok=True)


def _build_agent(client: docker.DockerClient, ref: str) -> None:
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        _add_bytes(tar, "Dockerfile", DOCKERFILE.encode())
        for name, path in agent_files():
            _add_bytes(tar, name, path.read_bytes())
    context.seek(0)
    try:
        client.images.build(
            fileobj=context,
            custom_context=True,
            tag=ref,
            pull=False,
            rm=True,
            forcerm=True,
            labels={"infrax.agent-image": ref},
        )
    except docker.errors.BuildError as error:
        steps = "".join(str(line.get("stream", line.get("error", ""))) for line in error.build_log)
        raise ImageError(f"building {ref} from {BASE_IMAGE} failed: {error.msg}\n{steps[-2000:]}") from error
    log.info("built %s", ref)


def _add_bytes(tar: tarfile.TarFile, name: str, content: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(content), 0o644
    tar.addfile(info, io.BytesIO(content))


def _has_image(client: docker.DockerClient, ref: str) -> bool:
    try:
        client.images.get(ref)
    except docker.errors.ImageNotFound:
        return False
    return True


def _client(docker_url: str) -> docker.DockerClient:
    # An explicit API version: no round trip to the engine just to construct the client.
    return docker.DockerClient(base_url=docker_url, version="1.41", timeout=600)


@contextlib.contextmanager
def _build_lock(docker_url: str) -> Iterator[None]:
    key = hashlib.sha256(docker_url.encode()).hexdigest()[:12]
    with open(Path(tempfile.gettempdir()) / f"infrax-image-build-{key}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
