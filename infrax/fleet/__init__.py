"""Workers on other machines: `infrax worker` dials out to the provisioner and runs containers there.

A worker needs no inbound port. It opens one WebSocket to the provisioner
(`/api/v1/workers/connect`, a pool token holding `provisioner:worker:<pool>`), says which pool it
joins and how many containers it may run, and from then on the provisioner asks it, over that
connection, to start and stop containers (agents in its own `process` provider, as the
provisioner's would be). The agent protocol is carried over the same connection: the provisioner
listens on a relay address of its own for each remote container, and each connection there is one
channel of the WebSocket to that container's agent on the worker's loopback. The executioner and
the provisioner's heartbeats connect to the relay as they would to any agent, with the container's
secret, so a worker sees only its own containers' traffic, and can reach no other worker's.

| module         | what                                                                |
|----------------|---------------------------------------------------------------------|
| `protocol`     | the messages of the worker connection, and its binary channel frames |
| `gateway`      | the provisioner's side: connected workers, calls to them, relays     |
| `links`        | what it knows of each worker and remote container; the close codes   |
| `pool_provider`| a pool of workers as a container provider (`kind: pool`)             |
| `worker`       | `infrax worker`: the connection, its containers, its channels        |
"""
