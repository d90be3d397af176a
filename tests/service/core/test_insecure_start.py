"""Refusing to start insecurely: API keys required with an empty HMAC secret is a start-up
error that names the setting, in the settings and from `autocompress serve`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.core.settings import Settings
from tests.conftest import ROOT, free_port


def test_settings_refuse_required_api_keys_without_a_secret(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="AUTOCOMPRESS_SECRET_KEY"):
        Settings(home=tmp_path, require_api_key=True, secret_key="")
    assert Settings(home=tmp_path, require_api_key=True, secret_key="s3cret").require_api_key


def test_serve_exits_naming_the_setting(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "AUTOCOMPRESS_HOME": str(tmp_path),
        "AUTOCOMPRESS_REQUIRE_API_KEY": "true",
        "AUTOCOMPRESS_SECRET_KEY": "",
    }
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(free_port())],
        env=env, capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode != 0
    assert "AUTOCOMPRESS_SECRET_KEY" in done.stderr, done.stderr[-2000:]
