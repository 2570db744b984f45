"""Another CLC process of a test cloud, for the active/standby tests and benchmarks (KOALA_DATABASE_URL)."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from common.config import parse_conf, render_conf
from tests.harness import Cloud, ServiceProcess, free_port
from tests.waiting import wait_for


class SecondClc(ServiceProcess):
    """Another CLC process of the cloud on the same database: same identity, own port, state directory and log;
    optionally bound to `bind` inside the network namespace `netns`, with more settings in `extra`."""

    role = "clc"

    def __init__(
        self,
        cloud: Cloud,
        name: str,
        bind: str = "127.0.0.1",
        netns: str | None = None,
        state_dir: Path | None = None,
        extra: dict | None = None,
    ):
        self.cloud, self.id, self.port, self.netns = cloud, "clc", free_port(), netns
        self.url = f"http://{bind}:{self.port}"
        state = state_dir or cloud.dir / "data" / name
        state.mkdir(parents=True, exist_ok=True)
        base = {key: s.value for key, s in parse_conf(cloud.aio.conf_path("clc").read_text()).items()}
        values = {
            **base,
            "KOALA_BIND": bind,
            "KOALA_CLC_PORT": self.port,
            "KOALA_STATE_DIR": state,
            "KOALA_CLC_PUBLIC_URL": self.url,
            **(extra or {}),
        }
        self.conf_path = cloud.dir / "conf" / f"{name}.conf"
        self.conf_path.write_text(render_conf(values, f"Koala CLC {name}, written by the test harness."))
        self.log_path = cloud.dir / "logs" / f"{name}.log"
        self.process = None

    def start_active(self, timeout: float = 60.0) -> None:
        self.spawn()
        wait_for(lambda: health(self.url) == 200, timeout, what=lambda: f"an active CLC: {self.log()[-2000:]}")

    def start_standing_by(self, timeout: float = 60.0) -> None:
        self.spawn()
        wait_for(lambda: health(self.url) == 503, timeout, what=lambda: f"a standby CLC: {self.log()[-2000:]}")


def health(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=1) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return None
