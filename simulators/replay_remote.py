"""A replay on a broker and a server it did not start (``classcam-sim replay --broker URL
--server URL``): the broker learns the devices' accounts from its administrator, the server runs
on the replay's clock (``simulators.sim_server``, started before the replay). Both are waited
for, so that a step the operator has not done yet is told, not taken for a failed session.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from simulators.broker import BrokerAccounts, accepts_login
from simulators.school import wait_until

log = logging.getLogger(__name__)

# How long a replay waits for the broker's administrator to add the devices' accounts, and for
# the server's API to answer.
ACCOUNTS_WAIT_S = 600.0
REMOTE_SERVER_WAIT_S = 120.0


class RemoteBroker:
    """A broker the replay did not start (``--broker mqtt://host:port``), which already accepts
    the server's accounts. The devices are provisioned by the replay: their passwords are
    written to ``broker-accounts.json`` in the workdir, and ``start`` waits until the broker's
    administrator has added them."""

    def __init__(self, url: str, accounts_file: Path) -> None:
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 1883
        self.accounts = BrokerAccounts()
        self.accounts_file = accounts_file

    def add_account(self, username: str, password: str | None = None) -> str:
        password = self.accounts.add(username, password)
        self.accounts_file.write_text(json.dumps(self.accounts.passwords, indent=2))
        return password

    def start(self) -> None:
        """Wait until the broker takes every device's login (up to ``ACCOUNTS_WAIT_S``)."""
        waiting = dict(self.accounts.passwords)

        def all_accepted() -> bool:
            for user, password in list(waiting.items()):
                if accepts_login(self.host, self.port, user, password):
                    del waiting[user]
            return not waiting

        if all_accepted():
            return
        log.warning(
            "waiting until the broker at %s:%d accepts the devices' logins in %s",
            self.host,
            self.port,
            self.accounts_file,
        )
        if not wait_until(all_accepted, timeout=ACCOUNTS_WAIT_S, step=1.0):
            raise RuntimeError(
                f"the broker at {self.host}:{self.port} still refuses {', '.join(sorted(waiting))}"
                f" after {ACCOUNTS_WAIT_S:.0f} s: add the accounts of {self.accounts_file}"
            )

    def stop(self) -> None:
        return None


def wait_for_server(api_url: str, token: str, clock_path: Path) -> None:
    """Until the server answers its API with ``token``: it serves once the replay's clock
    exists (``simulators.sim_server`` waits for it), and a wrong URL or token is told now
    rather than as every session failing."""

    def answers() -> bool:
        try:
            response = httpx.get(
                f"{api_url}/sessions",
                params={"limit": 1},
                headers={"Authorization": f"Bearer {token}"},
                timeout=5,
            )
        except httpx.HTTPError:
            return False
        if response.status_code in (401, 403):
            raise RuntimeError(f"{api_url} refused the token: {response.status_code}")
        return response.status_code == 200

    if not wait_until(answers, timeout=REMOTE_SERVER_WAIT_S):
        raise RuntimeError(
            f"no answer from {api_url} after {REMOTE_SERVER_WAIT_S:.0f} s: is its server running"
            f" with CLASSCAM_SIM_CLOCK={clock_path}?"
        )
