"""villaged/config.py: the spec's [federation] table in a daemon's TOML file."""

from __future__ import annotations

from pathlib import Path

import pytest

from villaged.config import load_config
from villaged.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "village.toml"
    path.write_text(f'data_dir = "{tmp_path}"\n{text}')
    return path


@pytest.mark.parametrize(("enabled", "policy"), [("true", "auto"), ("false", "manual")])
def test_federation_enabled_is_the_join_policy(tmp_path: Path, enabled: str, policy: str) -> None:
    assert load_config(write(tmp_path, f"[federation]\nenabled = {enabled}\n"), {}).join_policy == policy


@pytest.mark.parametrize(("text", "field", "fragment"), [
    ("[federation]\nround_interval_minutes = 30\n", "federation.round_interval_minutes", "job setting"),
    ("[federation]\nenabled = 1\n", "federation.enabled", "true or false"),
    ('join_policy = "auto"\n[federation]\nenabled = false\n', "federation.enabled", "contradicts join_policy"),
])
def test_federation_table_errors_name_file_and_key(tmp_path: Path, text: str, field: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), {})
    assert info.value.field == field and fragment in info.value.reason and str(tmp_path) in str(info.value)
