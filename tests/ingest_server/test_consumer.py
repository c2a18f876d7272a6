"""The MQTT consumer end to end: a device on a real broker uploads a clip and hears complete;
every message is acknowledged to the broker after its commit (see also test_consumer_durability)."""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ingest_helpers import Harness, TestUpload, make_upload
from sqlalchemy import func, select

from common import topics
from common.schemas import Ack, AckReplyTo, AckState, decode
from ingest_server.consumer import ConsumerThread, backoff_delay
from ingest_server.models import Clip
from ingest_server.settings import Settings
from ingest_server.tls_certs import make_ca
from simulators.broker import SERVER_USER, EmbeddedBroker, MosquittoBroker

ACK_TIMEOUT = 10.0


class Device:
    """A paho client logged in as a device, collecting the acks addressed to it."""

    def __init__(
        self, broker: MosquittoBroker | EmbeddedBroker, device_id: str, protocol: int
    ) -> None:
        self.acks: queue.Queue[Ack] = queue.Queue()
        subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=device_id, protocol=protocol
        )
        self.client.username_pw_set(device_id, broker.accounts.passwords[device_id])
        self.client.on_message = lambda c, u, m: self.acks.put(decode(Ack, m.payload))
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(topics.ack(device_id), qos=1)
        assert subscribed.wait(ACK_TIMEOUT)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(ACK_TIMEOUT)

    def wait_ack(self, reply_to: AckReplyTo, timeout: float = ACK_TIMEOUT) -> Ack:
        """The next ack answering ``reply_to``; ``queue.Empty`` after ``timeout`` of silence."""
        while True:
            ack = self.acks.get(timeout=timeout)
            if ack.reply_to is reply_to:
                return ack

    def upload(self, upload: TestUpload) -> Ack:
        """The device side of the protocol: init, the chunks asked for, fin, until final."""
        self.publish(upload.init_topic(), upload.init_payload)
        ack = self.wait_ack(AckReplyTo.INIT)
        assert ack.state is AckState.MISSING and ack.missing == [(0, upload.manifest.size)]
        for offset, data in upload.chunks:
            self.client.publish(upload.chunk_topic(offset), data, qos=1)
        self.publish(upload.fin_topic(), upload.fin_payload())
        return self.wait_ack(AckReplyTo.FIN)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _settings(
    broker: MosquittoBroker | EmbeddedBroker,
    harness: Harness,
    protocol: str,
    shared_group: str | None,
) -> Settings:
    return harness.settings.model_copy(
        update={
            "mqtt_host": broker.host,
            "mqtt_port": broker.port,
            "mqtt_password": broker.accounts.passwords[SERVER_USER],
            "mqtt_protocol": protocol,
            "mqtt_client_id": "ingest-test",
            "shared_group": shared_group,
        }
    )


def _run_upload(
    broker: MosquittoBroker | EmbeddedBroker,
    harness: Harness,
    tmp_path: Path,
    key: Ed25519PrivateKey,
    protocol: str,
    shared_group: str | None,
) -> None:
    broker.add_account("dev-1")
    upload = make_upload(
        tmp_path / "d", key, "dev-1", "up-mqtt", size=40 * 65536 + 999, chunk_size=65536
    )
    settings = _settings(broker, harness, protocol, shared_group)
    with ConsumerThread(settings, harness.processor) as consumer:
        device = Device(broker, "dev-1", mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311)
        try:
            ack = device.upload(upload)
        finally:
            device.close()
        assert consumer.consumer is not None and consumer.consumer.errors == 0
    # Every message was acknowledged to the broker, each after the commit that made it
    # durable (the last one by the flush on stop at the latest).
    counters = consumer.consumer.counters
    assert counters["acked"] == counters["received"] == len(upload.chunks) + 2
    assert counters["flushes"] >= 1
    assert (ack.state, ack.upload_id) == (AckState.COMPLETE, "up-mqtt")
    stored = harness.store.root / "clips/dev-1/2026-03-02/up-mqtt.mp4"
    assert stored.read_bytes() == upload.data
    with harness.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Clip)) == 1
    assert harness.processor.stats["chunks"] == len(upload.chunks)


def test_upload_through_mosquitto_mqtt5_shared_subscription(
    mosquitto: MosquittoBroker, harness: Harness, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    _run_upload(mosquitto, harness, tmp_path, key, "5", "ingest")


def test_upload_through_amqtt_mqtt311_plain_subscription(
    embedded_broker: EmbeddedBroker, harness: Harness, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    _run_upload(embedded_broker, harness, tmp_path, key, "3.1.1", None)


def test_messages_sent_while_the_server_is_down_wait_in_its_session(
    mosquitto: MosquittoBroker, harness: Harness, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    mosquitto.add_account("dev-1")
    upload = make_upload(tmp_path / "d", key, "dev-1", "up-late", size=3 * 4096)
    settings = _settings(mosquitto, harness, "5", "ingest")
    with ConsumerThread(settings, harness.processor):
        pass  # the first connection creates the persistent session and subscription
    device = Device(mosquitto, "dev-1", mqtt.MQTTv311)
    try:
        device.publish(upload.init_topic(), upload.init_payload)  # nobody is listening
        with ConsumerThread(settings, harness.processor):
            ack = device.wait_ack(AckReplyTo.INIT)
    finally:
        device.close()
    assert ack.state is AckState.MISSING


def test_consumer_reconnects_after_the_broker_restarts(
    mosquitto: MosquittoBroker, harness: Harness, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    mosquitto.add_account("dev-1")
    upload = make_upload(tmp_path / "d", key, "dev-1", "up-re", size=2 * 4096)
    settings = _settings(mosquitto, harness, "5", "ingest")
    with ConsumerThread(settings, harness.processor) as consumer:
        assert consumer.consumer is not None
        mosquitto.restart()
        device = Device(mosquitto, "dev-1", mqtt.MQTTv5)
        try:
            # Until the consumer is back the init goes unanswered; the device retries.
            for _ in range(20):
                device.publish(upload.init_topic(), upload.init_payload)
                try:
                    ack = device.wait_ack(AckReplyTo.INIT, 1.0)
                    break
                except queue.Empty:
                    continue
            else:
                pytest.fail("consumer never came back")
        finally:
            device.close()
        assert consumer.consumer.connections >= 2
    assert ack.state is AckState.MISSING


def test_backoff_is_capped_exponential_with_jitter() -> None:
    low = [backoff_delay(n, rng=lambda: 0.0) for n in range(8)]
    high = [backoff_delay(n, rng=lambda: 1.0) for n in range(8)]
    assert low[:3] == [0.25, 0.5, 1.0] and high[:3] == [0.5, 1.0, 2.0]
    assert backoff_delay(100, rng=lambda: 1.0) == 30.0
    assert all(lo < hi for lo, hi in zip(low, high, strict=True))


def test_consumer_over_tls_verifies_the_broker_with_its_ca(
    mosquitto: MosquittoBroker, harness: Harness, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    mosquitto.add_account("dev-1")
    upload = make_upload(tmp_path / "d", key, "dev-1", "up-tls", size=2 * 4096)
    settings = _settings(mosquitto, harness, "5", "ingest").model_copy(
        update={
            "mqtt_port": mosquitto.tls_port,
            "mqtt_tls": True,
            "mqtt_ca_file": mosquitto.ca_file,
        }
    )
    with ConsumerThread(settings, harness.processor) as consumer:
        device = Device(mosquitto, "dev-1", mqtt.MQTTv5)  # the plain loopback listener
        try:
            device.publish(upload.init_topic(), upload.init_payload)
            ack = device.wait_ack(AckReplyTo.INIT)
        finally:
            device.close()
        assert consumer.consumer is not None and consumer.consumer.connections == 1
    assert ack.state is AckState.MISSING
    # A broker certificate from another CA is refused: no connection, nothing consumed.
    other = tmp_path / "other-ca"
    other.mkdir()
    make_ca(other, "someone else's CA")
    refused = settings.model_copy(
        update={"mqtt_ca_file": other / "ca.crt", "mqtt_client_id": "ingest-other-ca"}
    )
    with pytest.raises(RuntimeError, match="did not subscribe"):
        ConsumerThread(refused, harness.processor).start(timeout=3.0)
