#!/bin/sh
# Install the classcam edge agent on Raspberry Pi OS (bookworm or later), as root:
#   sudo firmware_config/install-pi.sh cam-0001 broker.example.org ca.crt
# ca.crt is the broker's CA (`classcam-server tls-init` on the server): the agent connects over
# TLS only to a broker whose certificate it signed for broker.example.org.
# Idempotent: re-running upgrades the code and keeps the device's identity.
set -eu

DEVICE_ID=${1:?usage: install-pi.sh DEVICE_ID BROKER_HOST}
BROKER_HOST=${2:?usage: install-pi.sh DEVICE_ID BROKER_HOST CA_CERT}
CA_CERT=${3:?usage: install-pi.sh DEVICE_ID BROKER_HOST CA_CERT}
SRC=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=/opt/classcam
ETC=/etc/classcam

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }

# picamera2 and libcamera come from apt on a Pi (PyPI's picamera2 cannot import libcamera);
# the venv sees them through --system-site-packages.
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-picamera2 \
    python3-libcamera >/dev/null || \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null

id classcam >/dev/null 2>&1 || useradd --system --home-dir /var/lib/classcam \
    --shell /usr/sbin/nologin --groups video,dialout classcam

mkdir -p "$PREFIX"
if [ "$SRC" != "$PREFIX" ]; then
    cp -a "$SRC/." "$PREFIX/"
fi
[ -x "$PREFIX/.venv/bin/python" ] || python3 -m venv --system-site-packages "$PREFIX/.venv"
"$PREFIX/.venv/bin/pip" install -q --upgrade pip
"$PREFIX/.venv/bin/pip" install -q "$PREFIX[agent,pi]"

install -d -m 0750 "$ETC"
install -d -m 0700 "$ETC/credentials"
if [ ! -f "$ETC/credentials/device-key.pem" ]; then
    "$PREFIX/.venv/bin/classcam-agent" provision --device-id "$DEVICE_ID" \
        --broker-host "$BROKER_HOST" --out "$ETC/credentials"
    mv "$ETC/credentials/agent.toml" "$ETC/agent.toml"
    sed -i 's#^state_dir = .*#state_dir = "/var/lib/classcam"#' "$ETC/agent.toml"
    echo "register the public key above on the server, and add the broker password" \
         "($ETC/credentials/broker-password) to the broker for user $DEVICE_ID"
fi
install -m 0644 "$CA_CERT" "$ETC/credentials/ca.crt"
chown -R root:classcam "$ETC"
chmod 0640 "$ETC/agent.toml"

install -m 0644 "$PREFIX/systemd/classcam-agent.service" /etc/systemd/system/
systemctl daemon-reload
systemctl enable --now classcam-agent.service
systemctl --no-pager status classcam-agent.service || true
