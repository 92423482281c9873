"""Where partitions' artifacts are kept: a small interface, a filesystem store (the default) and an
in-memory one for tests. An S3-compatible store is a third implementation of the same interface."""

from infrax.artifacts.base import (
    Artifact,
    ArtifactExists,
    ArtifactNotFound,
    ArtifactStore,
    InvalidArtifactName,
    check_name,
)
from infrax.artifacts.filesystem import FilesystemArtifacts
from infrax.artifacts.memory import MemoryArtifacts

__all__ = [
    "Artifact",
    "ArtifactExists",
    "ArtifactNotFound",
    "ArtifactStore",
    "FilesystemArtifacts",
    "InvalidArtifactName",
    "MemoryArtifacts",
    "check_name",
]
