"""core.data.audio: log-mel known answers on synthetic signals, real speech, tiny offline HuBERT."""
from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from core.data.audio import (
    AudioFeatureConfig,
    AudioFeatureSpec,
    frame_windows,
    hubert_steps,
    mel_centers,
    mel_filterbank,
    num_steps,
)
from core.data.features import audio_features, feature_config, feature_spec, feature_steps
from core.errors import InputError
from core.data.media import fit_length, read_audio, read_clip

SR = 16000


def _sine(freq: float, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# ----------------------------------------------------------------------------- mel
def test_filterbank_is_sane() -> None:
    cfg = AudioFeatureConfig()
    fb = mel_filterbank(cfg)
    assert fb.shape == (257, 80) and (fb >= 0).all()
    assert ((fb > 0).sum(dim=0) >= 2).all()  # no empty / single-bin filters at n_fft 512
    c = mel_centers(cfg)
    assert np.all(np.diff(c) > 0) and 0 < c[0] < 100 and 7000 < c[-1] < 8000


@pytest.mark.parametrize("freq", [1000.0, 300.0, 3000.0])
def test_sine_peaks_in_nearest_bin(freq: float) -> None:
    cfg = AudioFeatureConfig(normalize=False)
    f = feature_steps(_sine(freq, 1.0), cfg)
    assert f.shape == (50, 80)
    peak = int(f[5:-5].mean(dim=0).argmax())
    assert peak == int(np.abs(mel_centers(cfg) - freq).argmin())


def test_step_grid_and_impulse_alignment() -> None:
    """A burst inside video frame k's first 20 ms lands on step 2k (no half-step lag)."""
    assert num_steps(640 * 10) == 20 and num_steps(640 * 10 + 1) == 21
    T, k = 30, 17
    x = np.random.default_rng(0).normal(0, 1e-4, T * 640).astype(np.float32)
    x[640 * k + 60: 640 * k + 260] += _sine(2000, 200 / SR, 0.8)
    f = feature_steps(x, AudioFeatureConfig(normalize=False))
    assert f.shape == (2 * T, 80)
    assert int(f.mean(dim=1).argmax()) == 2 * k


def test_frame_window_convention() -> None:
    steps = torch.arange(20, dtype=torch.float32)[:, None].repeat(1, 3)  # S = 20 steps
    w = frame_windows(steps, 10, 16)
    assert w.shape == (10, 16, 3)
    assert w[0, :, 0].tolist() == [0] * 7 + list(range(9))            # [2i-7, 2i+9), clamped
    assert w[5, :, 0].tolist() == list(range(3, 19))
    assert w[9, :, 0].tolist() == list(range(11, 20)) + [19] * 7       # edge-padded end


def test_mel_on_real_clip(clips_dir: Path) -> None:
    clip = read_clip(clips_dir / "may_5s.mp4", size=32)
    T = clip.num_frames
    cfg = AudioFeatureConfig()
    feats = audio_features(clip.audio, T, cfg)
    assert feats.shape == (T, 16, 80) and feats.dtype == torch.float32
    assert torch.isfinite(feats).all()
    steps = feature_steps(clip.audio, cfg)
    assert steps.shape == (2 * T, 80)
    assert torch.allclose(steps.mean(dim=0), torch.zeros(80), atol=1e-4)  # per-bin normalised
    assert torch.allclose(steps.std(dim=0, unbiased=False), torch.ones(80), atol=1e-3)
    assert torch.equal(feats[10, 7], steps[20]) and torch.equal(feats[10, 8], steps[21])


@pytest.mark.parametrize("name", ["en_eng.wav", "fr_macron.wav", "en_kim.mp3"])
def test_energy_envelope_follows_rms(audio_dir: Path, name: str) -> None:
    a = read_audio(audio_dir / name)[: 20 * SR]
    T = a.shape[0] // 640
    a = fit_length(a, T * 640)
    steps = feature_steps(a, AudioFeatureConfig())
    rms = np.sqrt((a.reshape(-1, 320).astype(np.float64) ** 2).mean(axis=1))
    corr = np.corrcoef(steps.mean(dim=1).numpy(), np.log(rms + 1e-4))[0, 1]
    assert corr > 0.7, corr


def test_mel_is_gain_invariant(audio_dir: Path) -> None:
    """Level + per-bin normalisation: a 20 dB quieter take of the same speech, same
    features; without the level step the quiet bins fall into the log floor."""
    a = read_audio(audio_dir / "de_german1.wav")[: 4 * SR]
    cfg = AudioFeatureConfig()
    d = (feature_steps(a, cfg) - feature_steps(0.1 * a, cfg)).abs()
    assert float(d.max()) < 1e-3
    raw = AudioFeatureConfig(target_rms=None)
    assert float((feature_steps(a, raw) - feature_steps(0.1 * a, raw)).abs().mean()) > 0.1


def test_short_audio_is_edge_padded() -> None:
    feats = audio_features(_sine(440, 0.5), 20)  # 12.5 frames of audio for 20 frames
    assert feats.shape == (20, 16, 80) and torch.isfinite(feats).all()
    assert torch.equal(feats[-1, -1], feats[-2, -1])


# ----------------------------------------------------------------------------- hubert
@pytest.fixture(scope="module")
def tiny_hubert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import HubertConfig, HubertModel
    torch.manual_seed(0)
    cfg = HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, conv_dim=(16,) * 7, num_conv_pos_embeddings=16,
                       num_conv_pos_embedding_groups=4, feat_extract_norm="layer",
                       do_stable_layer_norm=True)  # the layout of hubert-large
    d = tmp_path_factory.mktemp("tiny_hubert")
    HubertModel(cfg).save_pretrained(d)
    return d


def test_hubert_local_folder(tiny_hubert: Path) -> None:
    from transformers import HubertModel
    x = np.random.default_rng(1).normal(0, 0.1, 3 * SR + 123).astype(np.float32)
    cfg = AudioFeatureConfig(kind="hubert", hubert_model=str(tiny_hubert))
    steps = feature_steps(x, cfg)
    S = num_steps(x.shape[0])
    assert steps.shape == (S, 32) and torch.isfinite(steps).all()
    # reference: the model run directly on the normalised, end-padded signal
    model = HubertModel.from_pretrained(tiny_hubert).eval()
    xn = torch.from_numpy((x - x.mean()) / np.sqrt(x.var() + 1e-7))
    xn = torch.nn.functional.pad(xn, (0, 320 * (S - 1) + 400 - xn.shape[0]))
    with torch.no_grad():
        ref = model(xn[None]).last_hidden_state[0]
    assert ref.shape[0] == S
    torch.testing.assert_close(steps, ref, atol=1e-4, rtol=1e-4)
    # chunked path (1 s chunks + 0.5 s context): same grid, nearly the same values
    chunked = hubert_steps(x, AudioFeatureConfig(kind="hubert", hubert_model=str(tiny_hubert),
                                                 chunk_s=1.0, context_s=0.5))
    assert chunked.shape == steps.shape and torch.isfinite(chunked).all()
    assert float((chunked - steps).abs().mean()) < 0.05 * float(steps.abs().mean())
    T = x.shape[0] // 640
    feats = audio_features(x, T, cfg)
    assert feats.shape == (T, 16, 32)
    spec = feature_spec(cfg)
    assert (spec.kind, spec.dim, spec.model) == ("hubert", 32, tiny_hubert.name)


def test_missing_hub_weights_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    cfg = AudioFeatureConfig(kind="hubert", hubert_model="facebook/hubert-large-ls960-ft",
                             cache_dir=str(tmp_path / "hf"))
    with pytest.raises(InputError) as ei:
        audio_features(np.zeros(SR, np.float32), 25, cfg)
    e = ei.value
    assert e.code == "wrong_weights"
    assert "facebook/hubert-large-ls960-ft" in e.problem and str(tmp_path / "hf") in e.problem
    assert "huggingface-cli download facebook/hubert-large-ls960-ft" in e.fix
    assert "allow_download" in e.fix and "local folder" in e.fix


def test_spec_refuses_mismatch() -> None:
    mel = feature_spec(AudioFeatureConfig())
    assert mel == AudioFeatureSpec("mel", 80, None, None, 16)
    assert AudioFeatureSpec.from_dict(mel.to_dict()) == mel
    mel.check_matches(AudioFeatureSpec.from_dict(mel.to_dict()))
    with pytest.raises(InputError) as ei:
        mel.check_matches(AudioFeatureSpec("hubert", 1024, "facebook/hubert-large-ls960-ft"))
    assert ei.value.code == "wrong_weights" and "mel" in ei.value.problem
    with pytest.raises(ValueError):
        AudioFeatureConfig(kind="deepspeech")


@pytest.mark.parametrize("kind", ["phones", "mel+phones"])
def test_phonetic_kinds_round_trip(audio_dir: Path, kind: str) -> None:
    """The phonetic kinds give per-frame windows of the declared size on the common grid, the
    spec turns back into the same config, and ``mel+phones`` is exactly mel beside phones."""
    from core.data.phones import FEATURE_DIM, phone_features

    wav = read_audio(audio_dir / "en_radio31.wav")[: 3 * 16000]
    cfg = AudioFeatureConfig(kind=kind)
    spec = feature_spec(cfg)
    assert spec.dim == (FEATURE_DIM if kind == "phones" else 80 + FEATURE_DIM)
    assert feature_config(spec) == cfg
    steps = feature_steps(wav, cfg)
    assert steps.shape == (150, spec.dim) and torch.isfinite(steps).all()
    assert torch.equal(steps[:, -FEATURE_DIM:], phone_features(wav))
    if kind == "mel+phones":
        assert torch.equal(steps[:, :80], feature_steps(wav, AudioFeatureConfig(kind="mel")))
    win = audio_features(wav, 75, cfg)
    assert win.shape == (75, 16, spec.dim)
    with pytest.raises(ValueError, match="kind must be one of"):
        AudioFeatureConfig(kind="phonemes")
