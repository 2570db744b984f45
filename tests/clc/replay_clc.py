"""The real Cloud Controller, set up to answer requests recorded from another cloud (`python replay_clc.py
--now EPOCH --ids emi-...,i-... --access-key ID --secret KEY --config FILE`):

- the EC2 signature check runs against a fixed clock (`--now`), since a recorded SigV2 request carries the
  Timestamp it was signed at;
- the ids the recorded cloud gave out (`--ids`) are handed out first, in order per prefix, so the recorded
  requests that name them (DescribeImages ImageId.1=emi-..., DescribeInstances InstanceId.1=i-...) find them;
- the recording's throw-away access key is given to the cloud admin at start (Koala never lets a key be chosen).

Everything else is the service as `koala clc` runs it: same class, same configuration, same process model.
"""

from __future__ import annotations

import argparse
import sys
import time

from common import ids


def _queue_ids(wanted: list[str]) -> None:
    queues: dict[str, list[str]] = {}
    for value in wanted:
        queues.setdefault(value.split("-", 1)[0], []).append(value)
    random_id = ids.new_id

    def recorded_first(prefix: str) -> str:
        queue = queues.get(prefix)
        return queue.pop(0) if queue else random_id(prefix)

    ids.new_id = recorded_first  # before the services import it by name


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--now", type=float, required=True)
    parser.add_argument("--ids", default="")
    parser.add_argument("--access-key", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--config", required=True)
    args = parser.parse_args()
    _queue_ids([value for value in args.ids.split(",") if value])

    from common.service import run
    from services.cloud_controller.service import CloudControllerService

    class ReplayCloudController(CloudControllerService):
        def __init__(self, config):
            super().__init__(config)
            self.ec2.clock = lambda: args.now

        async def on_start(self) -> None:
            await super().on_start()
            admin = await self.db.fetchone(
                "SELECT u.user_id FROM users u JOIN accounts a ON a.account_id = u.account_id"
                " WHERE a.is_admin = 1 AND u.name = 'admin'"
            )
            await self.db.execute(
                "INSERT OR IGNORE INTO access_keys(access_key_id, user_id, secret_key, created_at) VALUES (?, ?, ?, ?)",
                (args.access_key, admin["user_id"], args.secret, time.time()),
            )

    return run(ReplayCloudController, args.config)


if __name__ == "__main__":
    sys.exit(main())
