"""infrax agent: runs one bootstrapper at a time inside a container and streams its output.

The server side (``server``, ``runner``, ``protocol``, ``__main__``) uses only the
standard library so it can be mounted into a bare container that has nothing but
``python3``. See ``docs/protocols/agent-v1.md`` for the wire protocol.
"""

PROTOCOL_VERSION = 1
