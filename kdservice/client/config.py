"""Where the client finds the service and its key, first match wins:

1. arguments (`Client(base_url=..., api_key=...)`, `kd --url/--key`);
2. environment: KD_URL, KD_API_KEY;
3. the config file written by `kd login` (KD_CONFIG, default ~/.config/kd/config.json);
4. the embedded default: http://127.0.0.1:8000 and the key `kd serve` saved on its first
   start in $KD_DATA_DIR/api_key (./data/api_key).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class Target:
    url: str
    api_key: str | None
    source: str  # where the key came from, for messages


def config_path() -> Path:
    explicit = os.environ.get("KD_CONFIG")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "kd" / "config.json"


def read_config() -> dict[str, str]:
    path = config_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the config file {path}: {exc}") from None
    return {k: str(v) for k, v in data.items() if k in ("url", "api_key")}


def write_config(url: str, api_key: str) -> Path:
    """Save the URL and key for later commands, readable by the owner only."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"url": url, "api_key": api_key}, fh)
    tmp.replace(path)
    return path


def local_key_file() -> Path:
    return Path(os.environ.get("KD_DATA_DIR", "data")) / "api_key"


def resolve(url: str | None = None, api_key: str | None = None) -> Target:
    config = read_config()
    url = url or os.environ.get("KD_URL") or config.get("url") or DEFAULT_URL
    if api_key:
        return Target(url.rstrip("/"), api_key, "argument")
    if os.environ.get("KD_API_KEY"):
        return Target(url.rstrip("/"), os.environ["KD_API_KEY"], "KD_API_KEY")
    if config.get("api_key"):
        return Target(url.rstrip("/"), config["api_key"], str(config_path()))
    key_file = local_key_file()
    if key_file.is_file():
        return Target(url.rstrip("/"), key_file.read_text().strip(), str(key_file))
    return Target(url.rstrip("/"), None, "none")
