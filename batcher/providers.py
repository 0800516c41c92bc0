"""Provider presets, API keys, auth headers and redaction.

Keys come from the environment or a file, never from a flag value, and leave this module
only inside the headers of a request.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from batcher.errors import UsageError, os_problem

log = logging.getLogger(__name__)

BEARER = "bearer"
X_API_KEY = "x-api-key"
AUTH_STYLES = (BEARER, X_API_KEY)
# The built-in mock's name in request hashes and batch records: its port changes every run.
MOCK_IDENTITY = "batcher-mock://local/v1"


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    base_url: str | None  # None: started on demand (the mock)
    auth_header: str
    key_env: str | None
    key_required: bool = True
    default_model: str | None = None  # used when neither -m nor the row names a model
    cache_key: bool = False  # accepts OpenAI's `prompt_cache_key` body key


PRESETS: dict[str, Provider] = {
    "octen": Provider("octen", "https://api.octen.ai/v1", X_API_KEY, "OCTEN_API_KEY"),
    "octopusx": Provider("octopusx", "https://octopusx.ai/v1", BEARER, "OCTOPUSX_API_KEY"),
    "openai": Provider(
        "openai", "https://api.openai.com/v1", BEARER, "OPENAI_API_KEY", cache_key=True
    ),
    "mock": Provider(
        "mock", None, BEARER, "BATCHER_MOCK_API_KEY", key_required=False, default_model="mock-1"
    ),
    # any other OpenAI-compatible server: --base-url, key optional unless --api-key-env
    "custom": Provider("custom", None, BEARER, None, key_required=False),
}


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where requests go and how they authenticate. `repr` never shows the key."""

    base_url: str
    auth_header: str
    key: str | None

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.key:
            if self.auth_header == X_API_KEY:
                headers["x-api-key"] = self.key
            else:
                headers["Authorization"] = f"Bearer {self.key}"
        return headers

    def redacted_headers(self) -> dict[str, str]:
        return {k: redact_value(k, v) for k, v in self.headers().items()}

    def __repr__(self) -> str:
        key = "set" if self.key else "none"
        return f"Endpoint({self.base_url!r}, auth={self.auth_header}, key={key})"


def redact_value(name: str, value: str) -> str:
    if name.lower() in ("authorization", "x-api-key", "api-key"):
        return "Bearer ***" if value.startswith("Bearer ") else "***"
    return value


def resolve_provider(
    provider: str | None, base_url: str | None, auth_header: str | None, api_key_env: str | None
) -> Provider:
    """The preset, with `--base-url`, `--auth-header` and `--api-key-env` laid over it."""
    if provider is None:
        provider = "custom" if base_url else "mock"
    preset = PRESETS.get(provider)
    if preset is None:
        names = ", ".join(PRESETS)
        raise UsageError(f"unknown provider '{provider}' (choose from {names})")
    if auth_header is not None and auth_header not in AUTH_STYLES:
        raise UsageError(f"--auth-header must be one of {', '.join(AUTH_STYLES)}")
    if base_url is not None:
        check_base_url(base_url)
    elif preset.name == "custom":
        raise UsageError("--provider custom needs --base-url")
    return Provider(
        name=preset.name,
        base_url=base_url or preset.base_url,
        auth_header=auth_header or preset.auth_header,
        key_env=api_key_env or preset.key_env,
        key_required=preset.key_required or api_key_env is not None,
        default_model=preset.default_model,
        cache_key=preset.cache_key or urlsplit(base_url or "").hostname == "api.openai.com",
    )


def check_base_url(base_url: str) -> None:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--base-url must be an http(s) URL, got {base_url!r}")
    if parts.username or parts.password:
        raise UsageError("--base-url must not contain credentials; use --api-key-env")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        log.warning(
            "sending over plain http to %s: the API key crosses the network unencrypted",
            parts.hostname,
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def checked_key(key: str, where: str) -> str:
    """A key that can go into a header: no line breaks, spaces or control characters."""
    if any(ch.isspace() or not ch.isprintable() for ch in key):
        raise UsageError(f"{where}: the key holds a line break, space or control character")
    return key


def read_key(provider: Provider, api_key_file: str | os.PathLike[str] | None) -> str | None:
    """The API key from `--api-key-file` or the provider's environment variable."""
    if api_key_file is not None:
        path = Path(api_key_file)
        try:
            key = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--api-key-file {path}: {os_problem(exc)}") from None
        if not key:
            raise UsageError(f"--api-key-file {path}: the file is empty")
        return checked_key(key, f"--api-key-file {path}")
    if provider.key_env:
        key = os.environ.get(provider.key_env, "").strip()
        if key:
            return checked_key(key, f"${provider.key_env}")
    if not provider.key_required:
        return None
    where = f"${provider.key_env}" if provider.key_env else "an environment variable"
    raise UsageError(
        f"no API key for provider '{provider.name}': set {where} or pass --api-key-file"
    )
