"""A stock Treeherder's listeners declare their source exchanges passively: every exchange they
bind exists as soon as infrax's bus is up, before anything was published on it."""

from __future__ import annotations

import uuid

import aio_pika
from yarl import URL

from infrax.bus import topics
from infrax.bus.rabbitmq import RabbitMQBus
from tests.conftest import AMQP_URL, rabbitmqctl

# What Treeherder's pulse_listener_tasks and pulse_listener_pushes (github and hgmo sources) bind.
TREEHERDER_SOURCES = (*topics.TC_EXCHANGES, topics.GITHUB_PUSH, topics.GITHUB_PULL_REQUEST, topics.HG_PUSHES)


async def test_every_exchange_a_treeherder_listener_binds_exists_once_the_bus_is_up(rabbitmq_url: str) -> None:
    del rabbitmq_url  # only for its check that the broker is there (and its skip, outside CI, when not)
    vhost = f"infrax-test-{uuid.uuid4().hex[:8]}"  # a broker nothing was ever published on
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, URL(AMQP_URL).user or "guest", ".*", ".*", ".*")
        url = str(URL(AMQP_URL).with_path("/" + vhost, encoded=False))
        bus = RabbitMQBus(url)
        await bus.start()
        try:
            connection = await aio_pika.connect(url)
            try:
                for exchange in TREEHERDER_SOURCES:
                    channel = await connection.channel()  # a failed passive declare closes its channel
                    await channel.declare_exchange(exchange, passive=True)
                    await channel.close()
            finally:
                await connection.close()
        finally:
            await bus.close()
    finally:
        rabbitmqctl("delete_vhost", vhost)
