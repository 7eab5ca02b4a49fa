"""Daemon configuration: flags, an optional TOML file, and defaults, validated with file-and-field errors."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from protocol.params import MAX_PARTICIPANTS
from protocol.policy import DEFAULT_PARTICIPANT_FLOOR
from protocol.training.spec import NODE_TYPES
from villaged.errors import ConfigError

JOIN_POLICIES = ("auto", "manual")
CERTIFICATE_FILE = "membership.cert"


@dataclass(frozen=True)
class DaemonConfig:
    data_dir: Path
    listen: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",)
    bootstrap: tuple[str, ...] = ()
    api_host: str = "127.0.0.1"
    api_port: int = 0
    certificate: Path | None = None  # default: data_dir/membership.cert
    # Pins the village: without it the admin key is taken from this node's own certificate.
    admin_public_key: str | None = None
    join_policy: str = "auto"  # auto: join every job whose named local input this node holds and allows
    # The fewest participants a round with this node's input may have (an input's policy may raise it).
    participant_floor: int = DEFAULT_PARTICIPANT_FLOOR
    log_level: str = "info"
    discovery_interval: float = 15.0
    announce_interval: float = 2.0  # re-announce pending jobs and joins (gossip is best effort)
    # What training jobs' participant requirements read but a node cannot measure (villaged/capabilities.py).
    device_type: str = "server"
    battery_percent: int | None = None  # None: mains powered
    charging: bool = False
    network_type: str = "ethernet"

    @property
    def certificate_path(self) -> Path:
        return self.certificate or self.data_dir / CERTIFICATE_FILE

    def validate(self, source: Path | str = "command line") -> DaemonConfig:
        if self.join_policy not in JOIN_POLICIES:
            raise ConfigError(source, "join_policy", f"must be one of {', '.join(JOIN_POLICIES)}, got {self.join_policy!r}")
        if type(self.participant_floor) is not int or not 2 <= self.participant_floor <= MAX_PARTICIPANTS:
            raise ConfigError(source, "participant_floor",
                              f"must be an integer in [2, {MAX_PARTICIPANTS}], got {self.participant_floor!r}")
        if not 0 <= self.api_port <= 65535:
            raise ConfigError(source, "api_port", f"must be a port number, got {self.api_port}")
        for name in ("discovery_interval", "announce_interval"):
            if not 0 < getattr(self, name) <= 3600:
                raise ConfigError(source, name, "must be in (0, 3600] seconds")
        if self.admin_public_key is not None:
            try:
                if len(bytes.fromhex(self.admin_public_key)) != 32:
                    raise ValueError
            except ValueError:
                raise ConfigError(source, "admin_public_key", "must be 64 hex digits (villagectl village init prints it)") from None
        if not self.listen:
            raise ConfigError(source, "listen", "needs at least one multiaddr")
        if self.device_type not in NODE_TYPES:
            raise ConfigError(source, "device_type", f"must be one of {', '.join(NODE_TYPES)}, got {self.device_type!r}")
        if self.battery_percent is not None and not (type(self.battery_percent) is int and 0 <= self.battery_percent <= 100):
            raise ConfigError(source, "battery_percent", f"must be an integer in [0, 100], got {self.battery_percent!r}")
        return self


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "data_dir": (str,), "listen": (list,), "bootstrap": (list,), "api_host": (str,), "api_port": (int,),
    "certificate": (str,), "join_policy": (str,), "log_level": (str,), "discovery_interval": (int, float),
    "announce_interval": (int, float), "admin_public_key": (str,), "participant_floor": (int,),
    "device_type": (str,), "battery_percent": (int,), "charging": (bool,), "network_type": (str,),
}


def _spec_federation_block(path: Path, values: dict[str, Any]) -> dict[str, Any]:
    """The spec's `[federation]` table in a daemon's file: `enabled` is this node's join_policy
    (true: auto, false: manual); the round and aggregation keys belong to a job (protocol/spec_config.py)."""
    if "federation" not in values:
        return values
    values = dict(values)
    section = values.pop("federation")
    if not isinstance(section, dict):
        raise ConfigError(path, "federation", "must be a table (the spec's federation block)")
    for key, value in section.items():
        if key != "enabled":
            raise ConfigError(path, f"federation.{key}", "is a job setting: give it in the job spec's federation "
                                                         "section (villagectl jobs create --spec FILE)")
        if type(value) is not bool:
            raise ConfigError(path, "federation.enabled", f"must be true or false, got {value!r}")
        policy = "auto" if value else "manual"
        if values.get("join_policy", policy) != policy:
            raise ConfigError(path, "federation.enabled", f"{str(value).lower()} contradicts join_policy {values['join_policy']!r}")
        values["join_policy"] = policy
    return values


def load_config(path: Path | None, overrides: dict[str, Any]) -> DaemonConfig:
    """Merge a TOML file (if any) with command-line overrides (which win)."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(path, "file", f"cannot read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(path, "file", f"not valid TOML: {exc}") from None
        values = _spec_federation_block(path, values)
        for key, value in values.items():
            if key not in _FIELD_TYPES:
                raise ConfigError(path, key, f"unknown setting (known: {', '.join(sorted(_FIELD_TYPES))})")
            if not isinstance(value, _FIELD_TYPES[key]) or isinstance(value, bool):
                raise ConfigError(path, key, f"wrong type {type(value).__name__}")
            if key in ("listen", "bootstrap") and not all(isinstance(v, str) for v in value):
                raise ConfigError(path, key, "must be a list of multiaddr strings")
    values.update({k: v for k, v in overrides.items() if v is not None and v != []})
    source = path or "command line"
    if "data_dir" not in values:
        raise ConfigError(source, "data_dir", "is required (--data-dir or data_dir in the config file)")
    config = DaemonConfig(data_dir=Path(values.pop("data_dir")).expanduser())
    converted = {}
    for key, value in values.items():
        if key in ("listen", "bootstrap"):
            converted[key] = tuple(value)
        elif key == "certificate":
            converted[key] = Path(value).expanduser()
        elif key in ("discovery_interval", "announce_interval"):
            converted[key] = float(value)
        else:
            converted[key] = value
    return replace(config, **converted).validate(source)


__all__ = ["DaemonConfig", "load_config"]
