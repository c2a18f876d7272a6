"""The broker config and ACL in firmware_config/ do what DESIGN.md §2 says."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt

from simulators.broker import SERVER_USER, MosquittoBroker


def _client(broker: MosquittoBroker, user: str) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user, protocol=mqtt.MQTTv311)
    client.username_pw_set(user, broker.accounts.passwords[user])
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def test_device_writes_only_its_own_subtree_and_server_reads_it(mosquitto: MosquittoBroker):
    mosquitto.add_account("dev-1")
    mosquitto.add_account("dev-2")
    got: list[str] = []
    subscribed = threading.Event()
    server = _client(mosquitto, SERVER_USER)
    server.on_message = lambda c, u, m: got.append(m.topic)
    server.on_subscribe = lambda *a: subscribed.set()
    server.subscribe("$share/ingest/classcam/v1/up/#", qos=1)
    assert subscribed.wait(5)
    dev = _client(mosquitto, "dev-1")
    dev.publish("classcam/v1/up/dev-1/event", b"mine", qos=1).wait_for_publish(5)
    dev.publish("classcam/v1/up/dev-2/event", b"spoofed", qos=1).wait_for_publish(5)
    dev.publish("classcam/v1/down/dev-2/cmd", b"not mine", qos=1).wait_for_publish(5)
    marker = _client(mosquitto, "dev-2")
    marker.publish("classcam/v1/up/dev-2/event", b"end", qos=1).wait_for_publish(5)
    deadline = threading.Event()
    for _ in range(50):
        if "classcam/v1/up/dev-2/event" in got:
            break
        deadline.wait(0.1)
    assert got == ["classcam/v1/up/dev-1/event", "classcam/v1/up/dev-2/event"]
    for c in (server, dev, marker):
        c.loop_stop()
        c.disconnect()


def test_wrong_password_is_refused(mosquitto: MosquittoBroker):
    mosquitto.add_account("dev-1")
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id="dev-1", protocol=mqtt.MQTTv311
    )
    client.username_pw_set("dev-1", "wrong")
    result = {}
    done = threading.Event()

    def on_connect(c, u, flags, reason_code, props):
        result["rc"] = reason_code
        done.set()

    client.on_connect = on_connect
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    assert done.wait(5)
    assert result["rc"].is_failure
    client.loop_stop()
