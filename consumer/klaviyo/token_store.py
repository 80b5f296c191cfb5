"""Where the newest OAuth refresh token is kept, so a restart and every replica use it.

Klaviyo may answer a refresh with a new refresh token; the old one may then stop working. The
token provider saves the new one here and re-reads it before every refresh, so whichever
process refreshed last, the others pick its token up.

- :class:`MemoryStore`: this process only (no store configured). A rotated token is lost on
  restart: the relay then starts from ``KLAVIYO_OAUTH_REFRESH_TOKEN`` again, which works only
  while Klaviyo does not rotate.
- :class:`FileTokenStore` (``KLAVIYO_OAUTH_TOKEN_STORE``): a file, mode 0600, replaced
  atomically (write a temporary file, fsync, rename), so a crash leaves the old or the new
  token, never half of one. For one process, or pods that share one volume.
- :class:`KubernetesSecretStore` (``KLAVIYO_OAUTH_TOKEN_SECRET``): one key of a Secret, read and
  merge-patched through the in-cluster API with the pod's service account, whose Role names
  only that Secret. Every replica reads the same object; Secrets are never logged and are the
  cluster's place for credentials (encrypted at rest where the cluster does that), unlike a
  ConfigMap.

The token itself is never logged here; errors name the store, not its content.
"""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
import tempfile
from pathlib import Path
from typing import Protocol

import aiohttp
import orjson

SECRET_KEY = "refresh-token"
_SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_TIMEOUT_SECONDS = 10.0


class TokenStoreError(Exception):
    """The store could not be read or written; the message names the store, never the token."""


class TokenStore(Protocol):
    async def load(self) -> str | None:
        """The newest refresh token saved, or None when none was saved yet."""
        ...

    async def save(self, refresh_token: str) -> None: ...

    def describe(self) -> str:
        """Where the token lives, for logs and ``check`` (no content)."""
        ...


class MemoryStore:
    def __init__(self) -> None:
        self._token: str | None = None

    async def load(self) -> str | None:
        return self._token

    async def save(self, refresh_token: str) -> None:
        self._token = refresh_token

    def describe(self) -> str:
        return "memory (lost on restart)"


class FileTokenStore:
    def __init__(self, path: Path) -> None:
        self._path = path

    async def load(self) -> str | None:
        return await asyncio.to_thread(self._read)

    async def save(self, refresh_token: str) -> None:
        await asyncio.to_thread(self._write, refresh_token)

    def describe(self) -> str:
        return f"file {self._path}"

    def _read(self) -> str | None:
        try:
            token = self._path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TokenStoreError(f"cannot read {self._path}: {exc.strerror}") from None
        return token or None

    def _write(self, refresh_token: str) -> None:
        folder = self._path.parent
        try:
            # mkstemp creates the file 0600 before anything is written to it.
            fd, temporary = tempfile.mkstemp(prefix=".refresh-token.", dir=folder)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(refresh_token)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(temporary, self._path)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
            directory = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(directory)  # the rename itself survives a crash
            finally:
                os.close(directory)
        except OSError as exc:
            raise TokenStoreError(f"cannot write {self._path}: {exc.strerror}") from None


class KubernetesSecretStore:
    """One key of a Secret, through the API server (GET, and a merge PATCH of that key)."""

    def __init__(
        self,
        name: str,
        *,
        namespace: str,
        api_url: str,
        bearer_token: str,
        ssl_context: ssl.SSLContext | bool,
        key: str = SECRET_KEY,
    ) -> None:
        self._url = f"{api_url.rstrip('/')}/api/v1/namespaces/{namespace}/secrets/{name}"
        self._where = f"Secret {namespace}/{name} key {key}"
        self._key = key
        self._headers = {"Authorization": f"Bearer {bearer_token}", "Accept": "application/json"}
        self._ssl = ssl_context

    @classmethod
    def in_cluster(cls, name: str) -> KubernetesSecretStore:
        """The pod's own namespace and service account, as Kubernetes mounts them."""
        try:
            namespace = (_SERVICE_ACCOUNT / "namespace").read_text().strip()
            token = (_SERVICE_ACCOUNT / "token").read_text().strip()
        except OSError as exc:
            raise TokenStoreError(
                f"KLAVIYO_OAUTH_TOKEN_SECRET needs the pod's service account token: {exc}"
            ) from None
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise TokenStoreError("KLAVIYO_OAUTH_TOKEN_SECRET works in a Kubernetes pod only")
        context = ssl.create_default_context(cafile=str(_SERVICE_ACCOUNT / "ca.crt"))
        return cls(
            name,
            namespace=namespace,
            api_url=f"https://{host}:{port}",
            bearer_token=token,
            ssl_context=context,
        )

    def describe(self) -> str:
        return self._where

    async def load(self) -> str | None:
        body = await self._call("GET", None)
        data = body.get("data") if isinstance(body, dict) else None
        encoded = data.get(self._key) if isinstance(data, dict) else None
        if not isinstance(encoded, str) or not encoded:
            return None
        return base64.b64decode(encoded).decode("utf-8").strip() or None

    async def save(self, refresh_token: str) -> None:
        encoded = base64.b64encode(refresh_token.encode("utf-8")).decode("ascii")
        await self._call("PATCH", orjson.dumps({"data": {self._key: encoded}}))

    async def _call(self, method: str, body: bytes | None) -> object:
        headers = dict(self._headers)
        if body is not None:
            headers["Content-Type"] = "application/merge-patch+json"
        try:
            async with (
                aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=_TIMEOUT_SECONDS)
                ) as session,
                session.request(
                    method, self._url, data=body, headers=headers, ssl=self._ssl
                ) as response,
            ):
                raw = await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise TokenStoreError(f"{self._where}: {type(exc).__name__}") from None
        if status != 200:
            raise TokenStoreError(f"{self._where}: {method} answered {status}")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise TokenStoreError(f"{self._where}: {method} answered no JSON") from None
