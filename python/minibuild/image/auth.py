"""Registry credentials: where they come from, and the 401 challenge dance.

Why separate from the push client: credentials are the one thing that must never reach a log, an
image or the repository, so they live in one small type (`Credentials`, whose repr hides the
password) with one lookup order, which the client then uses for Basic auth or for the bearer-token
flow the registry asks for in its WWW-Authenticate header:

1. `*.dkr.ecr.<region>.amazonaws.com` hosts: an ECR token from
   `boto3.client("ecr").get_authorization_token()` (base64 "AWS:<password>"), honouring the usual
   AWS environment (AWS_ENDPOINT_URL_ECR points it at another endpoint, e.g. moto in tests).
2. `$DOCKER_CONFIG/config.json` (default ~/.docker/config.json) `auths[host].auth` = base64 user:pass.
3. Anonymous.
"""
from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

ECR_HOST = re.compile(r"^(?P<account>\d+)\.dkr\.ecr(-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(\.cn)?$")


class AuthError(RuntimeError):
    """A registry refused us, or credentials could not be obtained; says which host and source."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)
    source: str = "explicit"

    def basic_header(self) -> str:
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


def _decode_pair(b64: str, where: str) -> tuple[str, str]:
    try:
        user, _, pw = base64.b64decode(b64).decode().partition(":")
    except (ValueError, UnicodeDecodeError) as exc:
        raise AuthError(f"{where}: auth entry is not base64 'user:password'") from exc
    if not user or not _:
        raise AuthError(f"{where}: auth entry is not base64 'user:password'")
    return user, pw


def ecr_credentials(host: str) -> Credentials:
    """Credentials for an ECR registry host from the ECR API (boto3)."""
    m = ECR_HOST.match(host)
    if not m:
        raise AuthError(f"{host} is not an ECR registry host")
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        ecr = boto3.client("ecr", region_name=m["region"])
        data = ecr.get_authorization_token(registryIds=[m["account"]])["authorizationData"][0]
    except (BotoCoreError, ClientError) as exc:
        raise AuthError(f"ECR token for {host} could not be obtained: {exc}") from exc
    user, pw = _decode_pair(data["authorizationToken"], f"ECR token for {host}")
    return Credentials(user, pw, source=f"ECR get_authorization_token ({m['region']})")


def docker_config_path() -> Path:
    return Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"


def docker_config_credentials(host: str) -> Credentials | None:
    path = docker_config_path()
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise AuthError(f"{path}: not valid JSON") from exc
    auths = doc.get("auths") or {}
    for key in (host, f"https://{host}", f"http://{host}", f"https://{host}/v2/", f"https://{host}/v1/"):
        entry = auths.get(key)
        if isinstance(entry, dict) and entry.get("auth"):
            user, pw = _decode_pair(entry["auth"], f"{path} auths[{key}]")
            return Credentials(user, pw, source=str(path))
        if isinstance(entry, dict) and entry.get("username"):
            return Credentials(entry["username"], entry.get("password", ""), source=str(path))
    return None


def credentials_for(host: str) -> Credentials | None:
    """The credentials to offer host, in the documented order; None = anonymous."""
    if ECR_HOST.match(host):
        return ecr_credentials(host)
    return docker_config_credentials(host)


_PARAM = re.compile(r'(\w+)="([^"]*)"')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """'Bearer realm="...",service="...",scope="..."' -> ("bearer", {...})."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_PARAM.findall(rest))
