"""``classcam-server tls-init`` and ``broker-config``: what a production broker is set up with."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

from cryptography import x509

from ingest_server.cli import main


def test_tls_init_makes_a_ca_and_a_server_certificate_for_the_names_given(tmp_path: Path):
    out = tmp_path / "tls"
    args = ["tls-init", "--out", str(out), "--host", "broker.example", "--ip", "10.0.0.5"]
    assert main(args) == 0
    for key in ("ca.key", "server.key"):
        assert stat.S_IMODE((out / key).stat().st_mode) == 0o600
    ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((out / "server.crt").read_bytes())
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["broker.example"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # A second run renews the server certificate under the same CA.
    assert main(["tls-init", "--out", str(out), "--host", "broker.example"]) == 0
    again = x509.load_pem_x509_certificate((out / "server.crt").read_bytes())
    again.verify_directly_issued_by(ca)
    assert again.serial_number != cert.serial_number


def test_tls_init_needs_a_name(tmp_path: Path):
    assert main(["tls-init", "--out", str(tmp_path / "tls")]) == 2


def test_broker_config_binds_client_ids_on_both_listeners(tmp_path: Path):
    out = tmp_path / "classcam.conf"
    assert main(["broker-config", "--out", str(out), "--tls-dir", "/etc/x"]) == 0
    lines = out.read_text().splitlines()
    listeners = [i for i, line in enumerate(lines) if line.startswith("listener ")]
    assert [lines[i] for i in listeners] == ["listener 1883 127.0.0.1", "listener 8883 0.0.0.0"]
    # use_username_as_clientid is a per-listener option in Mosquitto 2.0.
    for start, end in zip(listeners, [*listeners[1:], len(lines)], strict=True):
        assert "use_username_as_clientid true" in lines[start:end]
    assert "certfile /etc/x/server.crt" in lines and "allow_anonymous false" in lines
