"""Phone decoding in a child process (core.data.allphone): the same segments as in this
process on real speech, this process's threads keep running while a long decode runs, and a
child that cannot run falls back to decoding here."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from core.data import allphone
from core.data.media import read_audio
from core.data.phones import PHONE_CACHE_ENV, PhoneConfig, _decoder_args, decode_phones


@pytest.fixture(autouse=True)
def no_phone_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests time and compare real decodes: none is read from the suite's cache."""
    monkeypatch.delenv(PHONE_CACHE_ENV, raising=False)


def _pcm(audio_dir: Path, seconds: float) -> tuple[np.ndarray, bytes]:
    wav = read_audio(audio_dir / "en_eng.wav", 16000, duration=seconds)
    return wav, (np.clip(wav, -1, 1) * 32767.0).astype(np.int16).tobytes()


def _args() -> dict:
    c = PhoneConfig()
    return _decoder_args(c.lw, c.pip, c.beam, c.pbeam)


def test_child_process_gives_the_same_segments(audio_dir: Path) -> None:
    _, pcm = _pcm(audio_dir, 10.0)
    here = allphone.decode_here(pcm, _args())
    assert len(here) > 50  # ten seconds of speech: dozens of phones
    assert allphone.decode_in_child(pcm, _args()) == here


def test_long_decode_leaves_the_other_threads_running(audio_dir: Path) -> None:
    """A 20 s decode goes to a child process (longer than CHILD_PROCESS_SECONDS): a thread
    of this process keeps ticking every few milliseconds meanwhile; decoding here holds
    the interpreter for the whole decode."""
    wav, pcm = _pcm(audio_dir, 20.0)
    assert len(pcm) / 32000 > allphone.CHILD_PROCESS_SECONDS

    def longest_stall(work) -> float:
        t = threading.Thread(target=work)
        gaps, last = [], time.perf_counter()
        t.start()
        while t.is_alive():
            time.sleep(0.002)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
        t.join()
        return max(gaps)

    assert longest_stall(lambda: decode_phones(wav)) < 0.1
    assert longest_stall(lambda: allphone.decode_here(pcm, _args())) > 0.3


def test_child_that_fails_falls_back_to_decoding_here(audio_dir: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      caplog) -> None:
    _, pcm = _pcm(audio_dir, 9.0)
    monkeypatch.setattr(allphone.sys, "executable", "/nonexistent/python")
    with pytest.raises(RuntimeError, match="phone decoder's process failed"):
        allphone.decode_in_child(pcm, _args())
    assert allphone.decode_pcm(pcm, _args()) == allphone.decode_here(pcm, _args())
    assert "decoding in this process instead" in caplog.text


def test_cached_decode_is_read_back_and_keyed_by_the_samples(audio_dir: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """``$INSTAG_PHONE_CACHE``: a decode is written once and read back for the same samples
    and settings (the decoder is not run again); other samples get their own decode."""
    wav, _ = _pcm(audio_dir, 3.0)
    fresh = decode_phones(wav)
    monkeypatch.setenv(PHONE_CACHE_ENV, str(tmp_path))
    assert decode_phones(wav) == fresh and len(list(tmp_path.glob("*.json"))) == 1
    monkeypatch.setattr(allphone, "decode_here", lambda pcm, args: pytest.fail("decoded again"))
    assert decode_phones(wav) == fresh
    with pytest.raises(pytest.fail.Exception, match="decoded again"):
        decode_phones(wav[:-160])
