"""Mouth codes for a streamed Talk that are ready before the whole file's audio front end.

The mouth drive reads the audio through a front end whose costly part, phone decoding, runs
over the whole utterance: about 0.06 s per second of audio on one core, so for 30 s of
speech the first streamed frame would wait about 2 s for it. :class:`LeadCodes` drives the
first frames from the phones of the audio's first ``lead`` seconds alone (the log-mel and
loudness are the whole file's: they are cheap), runs the whole file's front end on a thread
of its own, and hands out the whole file's codes from a point well inside the prefix on,
cross-faded over a few frames so the mouth does not jump. Which frames come from which codes
is fixed by the lengths alone, so a streamed Talk makes the same frames on a fast machine
and a slow one.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


#: The name of the thread that runs the whole file's front end.
THREAD_NAME = "whole-audio-front-end"


@dataclass(frozen=True)
class LeadConfig:
    """seconds: the prefix's length at least (6.0 s); fraction: and at least this share of
    the audio (0.15), so the prefix's frames take longer to render than the whole file's
    front end takes to run; margin_frames: frames at the prefix's end whose codes are not
    used (25 = 1 s: the predictor's context and the phone decoder there see the cut);
    fade_frames: frames over which the prefix's codes cross-fade into the whole file's (10);
    min_rest_seconds: audio shorter than the prefix plus this (2.0 s) is read whole."""

    seconds: float = 6.0
    fraction: float = 0.15
    margin_frames: int = 25
    fade_frames: int = 10
    min_rest_seconds: float = 2.0

    def lead_frames(self, num_frames: int) -> int:
        """Frames in the prefix for a Talk of ``num_frames`` frames (0: read it whole)."""
        lead = max(self.seconds, self.fraction * num_frames / 25.0)
        if num_frames / 25.0 < lead + self.min_rest_seconds:
            return 0
        return int(round(lead * 25.0))


class LeadCodes:
    """(T, C) mouth codes, indexable like a tensor (``codes[t]``, ``codes[a:b]``).

    ``predict(n)`` -> (n, C): the drive's codes of the first ``n`` frames from the phones of
    their audio alone; ``predict(None)`` -> (T, C): the whole file's. Frames ``[0, a)`` come
    from the first, ``[a, a + fade)`` blend into the second, the rest are the second's;
    ``a = lead - margin - fade``. The whole file's prediction runs on a thread started here;
    reading a frame at or past ``a`` waits for it (and raises its error, if it failed).
    ``device``: where the rows are returned."""

    def __init__(self, predict: Callable[[int | None], Tensor], num_frames: int,
                 cfg: LeadConfig = LeadConfig(), device: torch.device | str = "cpu") -> None:
        lead = cfg.lead_frames(num_frames)
        if lead == 0:
            raise ValueError("the audio is too short for a lead; predict it whole")
        self.num_frames, self.device = num_frames, torch.device(device)
        self.start = lead - cfg.margin_frames - cfg.fade_frames
        self.fade = cfg.fade_frames
        self._lead = predict(lead)[:self.start + self.fade].to(self.device)
        self._whole: Tensor | None = None
        self._error: BaseException | None = None
        self._ready = threading.Event()

        def run() -> None:
            try:
                self._whole = predict(None).to(self.device)
            except BaseException as e:  # noqa: BLE001 - raised where the codes are read
                self._error = e
            finally:
                self._ready.set()

        self._thread = threading.Thread(target=run, name=THREAD_NAME, daemon=True)
        self._thread.start()

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.num_frames, self._lead.shape[1]))

    def __len__(self) -> int:
        return self.num_frames

    def whole(self) -> Tensor:
        """The whole file's (T, C) codes, waiting for them."""
        self._ready.wait()
        if self._error is not None:
            raise self._error
        assert self._whole is not None
        return self._whole

    def _rows(self, a: int, b: int) -> Tensor:
        """Rows ``[a, b)`` of the staged codes."""
        if b <= self.start:
            return self._lead[a:b]
        whole = self.whole()
        out = whole[a:b].clone()
        lo, hi = max(a, self.start), min(b, self.start + self.fade)
        if lo < hi:   # the cross-fade: weight of the whole file's codes 1/(fade+1) ... fade/(fade+1)
            t = torch.arange(lo, hi, device=self.device)
            w = ((t - self.start + 1).float() / (self.fade + 1))[:, None]
            out[lo - a:hi - a] = (1 - w) * self._lead[lo:hi] + w * whole[lo:hi]
        if a < self.start:
            out[:self.start - a] = self._lead[a:self.start]
        return out

    def __getitem__(self, key: int | slice) -> Tensor:
        if isinstance(key, slice):
            a, b, step = key.indices(self.num_frames)
            if step != 1:
                raise IndexError("LeadCodes takes contiguous slices only")
            return self._rows(a, max(a, b))
        t = int(key) + (self.num_frames if int(key) < 0 else 0)
        if not 0 <= t < self.num_frames:
            raise IndexError(f"frame {key} outside 0..{self.num_frames - 1}")
        return self._rows(t, t + 1)[0]

    def close(self) -> None:
        """Wait for the whole file's front end to end (reading every frame already did)."""
        self._thread.join()
