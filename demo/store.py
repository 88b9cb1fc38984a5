"""Session-private avatar store with consent records, an audit log and expiry.

Layout under ``root``::

    avatars/<id>/record.json    owner key, name, times, source name and hash (atomic write)
    avatars/<id>/consent.json   the consent record: time, statement (text and version),
                                clip sha256 and size
    avatars/<id>/clip.<ext>     the uploaded clip (kept for previews and benchmarks)
    avatars/<id>/avatar/        the core avatar folder (core.model.avatar)
    avatars/<id>/clip/          the processed clip (kept for Refine)
    avatars/<id>/refine/        a running refine's work: a copy of the avatar continued to
                                the longer schedule, put in place of ``avatar/`` only when
                                complete (:meth:`AvatarStore.replace_avatar`)
    avatars/<id>/preview.mp4    the preview render
    avatars/<id>/renders/       the Talk renders
    avatars/<id>/.incomplete    present while the avatar is being created
    avatars/<id>/external.json  copies outside the store tied to the avatar (uploads and
                                served files in the web server's cache), removed with it
    jobs/<id>/                  outputs of one benchmark job (job.json: owner, expiry;
                                consent.json for an uploaded clip; external.json)
    audit.jsonl                 append-only log: consent, created, create_failed, refined,
                                deleted, expired, benchmark_consent

Ids are 128-bit random (``secrets``). Owners are identified by a server-issued token
(:mod:`demo.owners`) that the browser keeps; only its sha256 (the *owner key*) is written
to disk. Every lookup checks the owner: another owner's id behaves exactly like an id that
does not exist. The consent given for a clip is also logged as a minimal entry (time,
statement version, owner key, clip hash and size; no clip, name or face data) that stays
in the log after the avatar is gone.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from core.atomic import write_text

#: Version of :data:`CONSENT_STATEMENT`; bump it whenever the wording changes.
STATEMENT_VERSION = "1"
CONSENT_STATEMENT = (
    "I am the person in this video, or I have their explicit permission to create a "
    "talking avatar of them. I will not use the avatar to deceive, impersonate or harm "
    "anyone, and I understand that everything it renders is marked as AI-generated.")

_ID = re.compile(r"^[0-9a-f]{32}$")
_INCOMPLETE = ".incomplete"


class NotFound(LookupError):
    """No such avatar for this session (missing, expired, or someone else's)."""


def iso(t: float) -> str:
    """UTC ISO-8601 time stamp with seconds."""
    # timezone.utc, not datetime.UTC: Python 3.10 (ZeroGPU) has no datetime.UTC
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")  # noqa: UP017


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file in the same folder, fsync, rename; owner-only)."""
    write_text(path, json.dumps(data, indent=1, sort_keys=True), private=True)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class AvatarRecord:
    """One avatar's ``record.json``."""

    id: str
    owner: str
    name: str
    created: float
    expires: float
    source_name: str
    clip_sha256: str
    clip_file: str
    preset: str = ""


class AvatarStore:
    """Avatars and job outputs, private to the session that made them."""

    def __init__(self, root: str | os.PathLike, expiry_s: float, max_per_owner: int = 5,
                 external_roots: Iterable[str | os.PathLike] = ()) -> None:
        """``external_roots``: folders outside the store (the web server's cache) whose
        files may be tied to an avatar or job with :meth:`attach`; nothing outside them is
        ever removed."""
        self.root = Path(root).expanduser()
        self.expiry_s = float(expiry_s)
        self.max_per_owner = max_per_owner
        self.external_roots = [Path(r).resolve() for r in external_roots]
        self._lock = threading.RLock()
        self._holders: Counter[Path] = Counter()  # requests using an external folder now
        self._doomed: set[Path] = set()           # refused while held: removed by the last holder
        for sub in ("avatars", "jobs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        self.log_path = self.root / "audit.jsonl"

    # -- owners -----------------------------------------------------------------------
    @staticmethod
    def owner_key(token: str) -> str:
        """What is stored on disk for an owner: sha256 of the token."""
        if not token:
            raise NotFound("no session")
        return hashlib.sha256(token.encode()).hexdigest()

    # -- audit log --------------------------------------------------------------------
    def audit(self, event: str, **fields: Any) -> None:
        """Append one JSON line (time, event, fields) and fsync it."""
        line = json.dumps({"time": iso(time.time()), "event": event, **fields}, sort_keys=True)
        with self._lock, open(self.log_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    # -- avatars ----------------------------------------------------------------------
    def folder(self, rec: AvatarRecord | str) -> Path:
        aid = rec if isinstance(rec, str) else rec.id
        if not _ID.match(aid):
            raise NotFound(aid)
        return self.root / "avatars" / aid

    def _read(self, aid: str) -> AvatarRecord | None:
        try:
            data = json.loads((self.folder(aid) / "record.json").read_text(encoding="utf-8"))
            return AvatarRecord(**data)
        except (OSError, ValueError, TypeError, NotFound):
            return None

    def _all(self) -> list[tuple[AvatarRecord | None, Path]]:
        out = []
        for d in (self.root / "avatars").iterdir():
            if d.is_dir() and _ID.match(d.name):
                out.append((self._read(d.name), d))
        return out

    def begin(self, token: str, clip: str | os.PathLike, name: str,
              preset: str = "", consent_time: float | None = None) -> AvatarRecord:
        """Start an avatar: copy the clip in, write the consent record (the caller has
        checked that consent was given; ``consent_time`` is when the server received it,
        default now) and the record, marked incomplete."""
        owner = self.owner_key(token)
        clip = Path(clip)
        with self._lock:
            mine = [r for r, _ in self._all() if r and r.owner == owner]
            if len(mine) >= self.max_per_owner:
                raise PermissionError(f"You already have {len(mine)} avatars (the limit is "
                                      f"{self.max_per_owner}). Delete one first.")
            aid = secrets.token_hex(16)
            d = self.folder(aid)
            d.mkdir(mode=0o700)
            (d / _INCOMPLETE).touch()
        try:
            now = time.time()
            ext = clip.suffix.lower() if re.fullmatch(r"\.[a-z0-9]{1,5}", clip.suffix.lower()) else ".mp4"
            shutil.copyfile(clip, d / f"clip{ext}")
            digest = self.write_consent(d, owner, d / f"clip{ext}", clip.name, consent_time,
                                        avatar=aid)
            rec = AvatarRecord(id=aid, owner=owner, name=(name.strip() or clip.stem)[:60],
                               created=now, expires=now + self.expiry_s,
                               source_name=clip.name, clip_sha256=digest,
                               clip_file=f"clip{ext}", preset=preset)
            write_json(d / "record.json", asdict(rec))
        except BaseException:
            shutil.rmtree(d, ignore_errors=True)
            raise
        return rec

    def write_consent(self, folder: Path, owner: str, clip: Path, clip_name: str,
                      consent_time: float | None = None, **ids: str) -> str:
        """Write ``folder/consent.json`` (time, statement and version, clip sha256 and size)
        for a clip the owner confirmed consent for, and its minimal entry in the log.
        Returns the clip's sha256."""
        digest = sha256_file(clip)
        t = iso(time.time() if consent_time is None else consent_time)
        size = clip.stat().st_size
        write_json(folder / "consent.json", {
            **ids, "time": t, "statement_version": STATEMENT_VERSION,
            "statement": CONSENT_STATEMENT, "clip_sha256": digest,
            "clip_bytes": size, "clip_name": clip_name, "owner": owner})
        self.audit("consent", **ids, owner=owner, consent_time=t,
                   statement_version=STATEMENT_VERSION, clip_sha256=digest, clip_bytes=size)
        return digest

    def finish(self, rec: AvatarRecord) -> None:
        """Mark the avatar complete and log its creation."""
        (self.folder(rec) / _INCOMPLETE).unlink(missing_ok=True)
        self.audit("created", avatar=rec.id, owner=rec.owner, clip_sha256=rec.clip_sha256,
                   statement_version=STATEMENT_VERSION, expires=iso(rec.expires))

    def replace_avatar(self, rec: AvatarRecord, new: Path, preset: str) -> AvatarRecord:
        """Put the complete avatar folder ``new`` (inside the avatar's folder) in place of
        ``avatar/`` and record its ``preset``. Two renames: the old folder is moved aside
        first and put back if the second fails; :meth:`get` also puts it back after a crash
        between them. The caller makes sure no job reads the avatar meanwhile
        (:meth:`demo.jobs.AvatarLocks.swapping`)."""
        d = self.folder(rec)
        if new.parent.parent != d or not (new / "model.safetensors").is_file():
            raise ValueError(f"{new} is not a complete avatar inside {d}")
        with self._lock:
            old = d / ".avatar.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(d / "avatar", old)
            try:
                os.replace(new, d / "avatar")
            except BaseException:
                os.replace(old, d / "avatar")
                raise
            shutil.rmtree(old, ignore_errors=True)
            rec = AvatarRecord(**{**asdict(rec), "preset": preset})
            write_json(d / "record.json", asdict(rec))
        self.audit("refined", avatar=rec.id, owner=rec.owner, preset=preset)
        return rec

    def abort(self, rec: AvatarRecord, reason: str) -> None:
        """Remove a failed avatar and everything copied for it."""
        self._remove(self.folder(rec))
        self.audit("create_failed", avatar=rec.id, owner=rec.owner, reason=reason)

    # -- files outside the store ---------------------------------------------------------
    def _external_dir(self, path: str | os.PathLike) -> Path | None:
        """The top folder under an external root that holds ``path`` (Gradio keeps each
        file in its own folder there), or None when ``path`` is outside every root."""
        p = Path(path).resolve()
        for root in self.external_roots:
            try:
                rel = p.relative_to(root)
            except ValueError:
                continue
            if len(rel.parts) >= 2:
                return root / rel.parts[0]
        return None

    def attach(self, folder: Path, path: str | os.PathLike) -> None:
        """Tie a copy outside the store (its folder under an external root) to an avatar
        or job ``folder``: it is removed with it. Paths outside the roots are ignored."""
        ext = self._external_dir(path)
        if ext is None:
            return
        f = folder / "external.json"
        with self._lock:
            try:
                have = json.loads(f.read_text())
            except (OSError, ValueError):
                have = []
            if str(ext) not in have:
                write_json(f, have + [str(ext)])

    @contextmanager
    def holding(self, path: str | os.PathLike | None) -> Iterator[None]:
        """Hold the external folder of an upload ``path`` for one request. The web server
        keeps identical uploads in one folder, so two requests can share it: a
        :meth:`discard_external` asked while another request holds it only marks it, and
        the last holder removes it on leaving (unless an avatar or job has attached it by
        then). Paths outside the external roots, and None, hold nothing."""
        ext = None if path is None else self._external_dir(path)
        if ext is None:
            yield
            return
        with self._lock:
            self._holders[ext] += 1
        try:
            yield
        finally:
            with self._lock:
                self._holders[ext] -= 1
                last = self._holders[ext] <= 0
                if last:
                    del self._holders[ext]
                if last and ext in self._doomed:
                    self._doomed.discard(ext)
                    self._remove_unattached(ext)

    def _remove_unattached(self, ext: Path) -> None:
        """Remove the external folder ``ext`` unless an avatar or job lists it in its
        ``external.json`` (it then goes with that avatar or job)."""
        for kind in ("avatars", "jobs"):
            for f in (self.root / kind).glob("*/external.json"):
                try:
                    if str(ext) in json.loads(f.read_text()):
                        return
                except (OSError, ValueError):
                    continue
        shutil.rmtree(ext, ignore_errors=True)

    def discard_external(self, path: str | os.PathLike) -> None:
        """Remove the folder under an external root that holds ``path`` (an upload no job
        will use); nothing outside the roots is touched. While requests hold it
        (:meth:`holding`) the last of them removes it; a folder an avatar or job has
        attached stays (it goes with that avatar or job)."""
        ext = self._external_dir(path)
        if ext is None:
            return
        with self._lock:
            if self._holders[ext] > 0:
                self._doomed.add(ext)
            else:
                self._remove_unattached(ext)

    def _remove(self, folder: Path) -> None:
        """Remove an avatar or job folder and the external copies tied to it."""
        try:
            ext = json.loads((folder / "external.json").read_text())
        except (OSError, ValueError):
            ext = []
        for e in ext:
            d = self._external_dir(Path(e) / "x")
            if d is not None and d == Path(e):
                shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)

    def list(self, token: str | None) -> list[AvatarRecord]:
        """This session's complete, unexpired avatars, oldest first."""
        if not token:
            return []
        owner, now = self.owner_key(token), time.time()
        with self._lock:
            recs = [r for r, d in self._all() if r and r.owner == owner and r.expires > now
                    and not (d / _INCOMPLETE).exists()]
        return sorted(recs, key=lambda r: r.created)

    def get(self, token: str | None, aid: str | None) -> AvatarRecord:
        """This session's avatar ``aid``. Raises NotFound otherwise (whatever the reason)."""
        if not token or not aid or not _ID.match(str(aid)):
            raise NotFound("no such avatar")
        rec = self._read(aid)
        d = self.folder(aid)
        if not (d / "avatar").exists() and (d / ".avatar.old").is_dir():
            with self._lock:  # a crash between the two renames of replace_avatar
                if not (d / "avatar").exists() and (d / ".avatar.old").is_dir():
                    os.replace(d / ".avatar.old", d / "avatar")
        if (rec is None or rec.owner != self.owner_key(token) or rec.expires <= time.time()
                or (d / _INCOMPLETE).exists()):
            raise NotFound("no such avatar")
        return rec

    def delete(self, token: str | None, aid: str | None) -> AvatarRecord:
        """Delete one of this owner's avatars (all its files, renders, benchmark outputs and
        their copies in the web server's cache) and log it. The caller makes sure no job
        uses it (:class:`demo.jobs.AvatarLocks`)."""
        with self._lock:
            rec = self.get(token, aid)
            self._remove(self.folder(rec))
            self._remove_jobs_of(rec.id)
        self.audit("deleted", avatar=rec.id, owner=rec.owner, clip_sha256=rec.clip_sha256)
        return rec

    # -- job outputs ------------------------------------------------------------------
    def render_path(self, rec: AvatarRecord, name: str = "talking.mp4") -> Path:
        """A fresh path for one render of this avatar (deleted with the avatar)."""
        d = self.folder(rec) / "renders" / secrets.token_hex(8)
        d.mkdir(parents=True, mode=0o700)
        return d / name

    def owner_of(self, folder: Path) -> str:
        """The owner key recorded in a job folder's ``job.json``."""
        return json.loads((folder / "job.json").read_text())["owner"]

    def discard_job(self, folder: Path) -> None:
        """Remove a failed job's folder and its external copies."""
        if folder.parent == self.root / "jobs":
            self._remove(folder)

    def job_dir(self, token: str, kind: str, avatar: str | None = None) -> Path:
        """A fresh private folder for one job's outputs (removed at expiry, or with
        ``avatar`` when that avatar is deleted)."""
        owner = self.owner_key(token)
        d = self.root / "jobs" / secrets.token_hex(16)
        d.mkdir(mode=0o700)
        now = time.time()
        write_json(d / "job.json", {"owner": owner, "kind": kind, "created": iso(now),
                                    "expires": now + self.expiry_s, "avatar": avatar})
        return d

    def _remove_jobs_of(self, aid: str) -> None:
        for d in (self.root / "jobs").iterdir():
            try:
                if json.loads((d / "job.json").read_text()).get("avatar") == aid:
                    self._remove(d)
            except (OSError, ValueError):
                continue

    # -- expiry -----------------------------------------------------------------------
    def sweep(self, now: float | None = None,
              in_use: Callable[[str], bool] = lambda aid: False) -> int:
        """Delete expired avatars (logged), stale incomplete ones and expired jobs, with
        their external copies; avatars ``in_use`` (a job is running) wait for the next
        sweep. Returns the number of folders removed."""
        now = time.time() if now is None else now
        removed = 0
        with self._lock:
            for rec, d in self._all():
                if in_use(d.name):
                    continue
                incomplete = (d / _INCOMPLETE).exists()
                if rec is None:
                    stale = now - d.stat().st_mtime > self.expiry_s
                    if stale:
                        self._remove(d)
                        removed += 1
                    continue
                if rec.expires <= now:
                    self._remove(d)
                    self._remove_jobs_of(rec.id)
                    removed += 1
                    if not incomplete:
                        self.audit("expired", avatar=rec.id, owner=rec.owner,
                                   clip_sha256=rec.clip_sha256)
                    else:
                        self.audit("create_failed", avatar=rec.id, owner=rec.owner,
                                   reason="expired while incomplete")
            for d in (self.root / "jobs").iterdir():
                try:
                    expires = json.loads((d / "job.json").read_text())["expires"]
                except (OSError, ValueError, KeyError):
                    expires = d.stat().st_mtime + self.expiry_s
                if expires <= now:
                    self._remove(d)
                    removed += 1
        return removed

    def sweep_external(self, now: float | None = None) -> int:
        """Remove folders under the external roots older than the expiry (uploads that no
        job used, copies of expired files). Age counts from the last change of the folder
        or its files (st_ctime: a copy keeps its source's st_mtime). Returns the count."""
        now = time.time() if now is None else now
        removed = 0
        for root in self.external_roots:
            if not root.is_dir():
                continue
            for d in root.iterdir():
                try:
                    paths = [d, *d.rglob("*")] if d.is_dir() else [d]
                    newest = max(max(p.lstat().st_mtime, p.lstat().st_ctime) for p in paths)
                except OSError:
                    continue
                if now - newest > self.expiry_s:
                    if d.is_dir():
                        shutil.rmtree(d, ignore_errors=True)
                    else:
                        d.unlink(missing_ok=True)
                    removed += 1
        return removed
