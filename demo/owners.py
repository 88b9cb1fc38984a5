"""Owner tokens: who may see an avatar.

A token is issued by the server: 128 random bits (``secrets``) followed by a 128-bit
HMAC-SHA256 tag under a server key, URL-safe base64 (43 characters). The browser keeps it
in ``localStorage`` (``gr.BrowserState``), so a reload or a server restart keeps the
owner's avatars; it travels only in request bodies (never in URLs) and is never logged.
The store keeps only its sha256. Gradio's ``session_hash`` grants nothing: a request is
tied to an owner only by a token that carries a valid tag.

The key lives in ``<data_root>/owner.key`` (0600); deleting it revokes every token.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from pathlib import Path

from core.atomic import write_bytes

_NONCE, _TAG = 16, 16  # bytes: 128-bit secret, 128-bit tag


class OwnerTokens:
    """Issues and checks owner tokens with a key kept under ``root``."""

    def __init__(self, root: Path) -> None:
        path = Path(root) / "owner.key"
        if not path.is_file():
            write_bytes(path, secrets.token_bytes(32), private=True)
        self._key = path.read_bytes()
        if len(self._key) < 32:
            raise ValueError(f"{path} is damaged (expected 32 random bytes); delete it to "
                             "start afresh (every existing owner loses access)")

    def _tag(self, nonce: bytes) -> bytes:
        return hmac.new(self._key, b"owner:" + nonce, hashlib.sha256).digest()[:_TAG]

    def issue(self) -> str:
        """A fresh token (give it to the browser; never log it)."""
        nonce = secrets.token_bytes(_NONCE)
        return base64.urlsafe_b64encode(nonce + self._tag(nonce)).decode().rstrip("=")

    def check(self, token: object) -> str | None:
        """``token`` if this server issued it, else None (constant-time tag check)."""
        if not isinstance(token, str) or len(token) != 43:
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=")
        except (binascii.Error, ValueError):
            return None
        nonce, tag = raw[:_NONCE], raw[_NONCE:]
        return token if hmac.compare_digest(tag, self._tag(nonce)) else None

    def browser_secret(self) -> str:
        """A stable secret for ``gr.BrowserState`` (Gradio sends it to the page, so it only
        obfuscates; it must stay stable so stored tokens survive a restart)."""
        return hmac.new(self._key, b"browser-state", hashlib.sha256).hexdigest()[:32]
