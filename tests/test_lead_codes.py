"""A streamed Talk's mouth codes in two stages (core.model.lead_codes): known answers with a
made-up predictor, errors of the whole file's front end where they are read, and on a real
avatar's drive and real speech, early codes from the prefix that stay close to the whole
file's, frames equal to the whole file's after the fade, and a streamed synthesis that
uses them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.model.lead_codes import LeadCodes, LeadConfig


def _predictor(T: int):
    """Column 0: the frame index; column 1: how many frames of audio were decoded."""
    def predict(lead: int | None) -> torch.Tensor:
        n = T if lead is None else lead
        return torch.stack([torch.arange(n, dtype=torch.float32),
                            torch.full((n,), float(n))], 1)
    return predict


def test_prefix_then_fade_then_whole_file() -> None:
    T = 500                      # 20 s: the prefix is max(6 s, 15 % of 20 s) = 6 s
    cfg = LeadConfig()
    assert cfg.lead_frames(T) == 150
    codes = LeadCodes(_predictor(T), T, cfg)
    start = 150 - cfg.margin_frames - cfg.fade_frames
    assert codes.start == start == 115 and codes.shape == (T, 2) and len(codes) == T
    rows = torch.stack([codes[t] for t in range(T)])
    assert torch.allclose(rows[:, 0], torch.arange(T, dtype=torch.float32))
    assert torch.all(rows[:start, 1] == 150) and torch.all(rows[start + 10:, 1] == T)
    w = torch.arange(1, 11, dtype=torch.float32) / 11   # the fade, strictly between the two
    assert torch.allclose(rows[start:start + 10, 1], (1 - w) * 150 + w * T)
    # slices across every boundary equal the rows read one by one
    for a, b in ((0, 16), (100, 120), (110, 140), (120, 125), (480, 500), (0, T)):
        assert torch.equal(codes[a:b], rows[a:b])
    assert torch.equal(codes[-1], rows[-1])
    with pytest.raises(IndexError):
        codes[T]
    codes.close()


def test_long_audio_gets_a_longer_prefix_and_short_audio_none() -> None:
    cfg = LeadConfig()
    assert cfg.lead_frames(120 * 25) == 18 * 25   # 15 % of 120 s
    assert cfg.lead_frames(8 * 25) == 150         # 6 s + the 2 s left after it
    assert cfg.lead_frames(7 * 25) == 0           # read whole
    with pytest.raises(ValueError, match="too short"):
        LeadCodes(_predictor(7 * 25), 7 * 25, cfg)


def test_whole_file_error_is_raised_where_its_codes_are_read() -> None:
    T = 300

    def predict(lead: int | None) -> torch.Tensor:
        if lead is None:
            raise RuntimeError("the decoder failed")
        return _predictor(T)(lead)

    codes = LeadCodes(predict, T)
    assert codes[:codes.start].shape == (codes.start, 2)   # the prefix's frames still come
    with pytest.raises(RuntimeError, match="the decoder failed"):
        codes[codes.start]
    codes.close()


def test_real_drive_prefix_codes_stay_close_to_the_whole_files(tiny_avatar: Path,
                                                                audio_dir: Path) -> None:
    """On 12 s of real speech, the frames driven from the phones of the first 6 s alone
    differ from the whole file's by a small part of how much the code moves over the
    speech."""
    from core.data.media import read_audio
    from core.model.avatar import load_avatar

    drive = load_avatar(tiny_avatar).drive
    assert drive is not None
    wav = read_audio(audio_dir / "en_eng.wav", 16000, duration=12.0)
    T = len(wav) // 640
    wav = wav[:T * 640]
    codes = LeadCodes(lambda n: drive.predicted(wav, T, lead_frames=n), T)
    whole = drive.predicted(wav, T)
    assert torch.allclose(codes.whole(), whole)
    early = codes[:codes.start]
    assert torch.allclose(codes[codes.start + codes.fade:], whole[codes.start + codes.fade:])
    spread = whole.std(0)
    assert torch.all(spread > 0)
    gap = (early - whole[:codes.start]).abs().mean(0)
    print("prefix vs whole file, mean |difference| / std of the code:", (gap / spread).tolist())
    assert torch.all(gap < 0.05 * spread), (gap, spread)


def test_streamed_talk_starts_from_the_lead_and_ends_as_a_whole_file_talk(
        tiny_avatar: Path, audio_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """3.2 s of speech with a 2 s lead (so the test renders few frames): the frames rendered
    with the staged codes equal those of the whole file's codes after the fade, bit for bit,
    and differ little before it; a streamed synthesis uses the staged codes, an unstreamed
    one does not."""
    import core.synthesize as S
    from core.data.media import read_audio
    from core.model.avatar import load_avatar

    lead = LeadConfig(seconds=2.0, margin_frames=15, fade_frames=10, min_rest_seconds=1.0)
    av = load_avatar(tiny_avatar)
    wav = read_audio(audio_dir / "en_eng.wav", 16000, duration=3.2)
    T = len(wav) // 640
    assert T == 80 and lead.lead_frames(T) == 50
    feats = S.field_audio(av, wav, T)
    staged = LeadCodes(lambda n: av.drive.predicted(wav, T, lead_frames=n), T, lead)
    a = np.stack(list(S.render_frames_fast(av, feats, False, None, staged))).astype(float)
    b = np.stack(list(S.render_frames_fast(av, feats, False, None,
                                           av.drive.predicted(wav, T)))).astype(float)
    cut = staged.start + staged.fade
    assert (staged.start, cut) == (25, 35)
    assert np.array_equal(a[cut:], b[cut:])
    head = np.abs(a[:staged.start] - b[:staged.start]).mean()
    print(f"mean |staged - whole| per pixel value before the fade: {head:.3f}")
    assert head < 1.0

    made: list[LeadCodes] = []

    class Spy(LeadCodes):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(S, "LeadCodes", Spy)
    kw = dict(duration=3.2, frame="crop", mark=False, talk=S.TalkConfig(lead=lead))
    streamed = S.synthesize(tiny_avatar, audio_dir / "en_eng.wav", tmp_path / "s.mp4",
                            stream_dir=tmp_path / "stream", **kw)
    assert len(made) == 1 and made[0].num_frames == streamed.frames == 80
    assert len(streamed.segments) == 4       # 0.4 s, two of 1 s, the last 0.8 s
    S.synthesize(tiny_avatar, audio_dir / "en_eng.wav", tmp_path / "w.mp4", **kw)
    assert len(made) == 1                    # unstreamed: the whole file's codes first
