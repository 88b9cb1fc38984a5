"""Offline text-to-speech (core.data.speech): real synthesis with the shipped voices, the
audio front end on it, and every kind of bad text, voice and rate."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from core.data import speech
from core.data.media import read_audio
from core.data.phones import VISEMES, decode_phones, phone_features
from core.errors import InputError

PANGRAM = ("The quick brown fox jumps over the lazy dog. Please bring my map back before "
           "the meeting.")


def speech_fraction(audio: np.ndarray, sr: int) -> float:
    """Share of 20 ms windows within 30 dB of the loudest one."""
    n = sr // 50
    frames = audio[: len(audio) // n * n].reshape(-1, n)
    db = 10 * np.log10((frames ** 2).mean(1) + 1e-12)
    return float((db > db.max() - 30).mean())


@pytest.fixture(scope="module")
def joe(tmp_path_factory) -> tuple[speech.Speech, np.ndarray]:
    """The default voice speaking the pangram, and the same audio as the avatar reads it
    (written to a wav and read back at 16 kHz)."""
    sp = speech.speak(PANGRAM)
    path = sp.write_wav(tmp_path_factory.mktemp("tts") / "joe.wav")
    return sp, read_audio(path)


def test_default_voice_is_the_neural_english_one(joe) -> None:
    sp, wav16 = joe
    assert sp.voice.name == speech.DEFAULT_VOICE == "joe" and sp.voice.engine == "piper"
    assert sp.sample_rate == 22050 and sp.audio.dtype == np.float32
    # 16 words at a normal pace (2-4 words/s) plus the sentence pause
    assert 3.5 < sp.seconds < 8.5, sp.seconds
    assert abs(len(wav16) / 16000 - sp.seconds) < 0.01
    assert 0.5 < speech_fraction(sp.audio, sp.sample_rate) < 0.98  # speech with pauses
    assert np.abs(sp.audio).max() <= 1.0


def test_front_end_hears_phones_in_synthesized_speech(joe) -> None:
    """The speaker-independent front end works on the synthetic voice as on recordings
    (the same checks tests/test_lips.py makes on real speech)."""
    _, wav16 = joe
    segs = decode_phones(wav16)
    spoken = [s for s in segs if s.phone not in ("SIL", "+NSN+", "+SPN+")]
    assert len(spoken) >= 30, [s.phone for s in segs]
    # the bilabials of "brown", "jumps", "please", "bring", "map", "back", "before", "meeting"
    assert sum(s.phone in ("B", "P", "M") for s in spoken) >= 4
    post = phone_features(wav16).numpy()[:, :len(VISEMES)]
    assert post[:, VISEMES.index("rest")].mean() < 0.5
    assert (post.argmax(1) == VISEMES.index("closed")).sum() >= 5


def test_rate_changes_the_length_not_the_words() -> None:
    text = "Seven silver spoons sat on the kitchen table."
    normal, fast = speech.speak(text), speech.speak(text, rate=2.0)
    ratio = fast.seconds / normal.seconds
    assert 0.4 < ratio < 0.7, ratio
    slow = speech.speak(text, "espeak-en", rate=0.5)
    assert slow.seconds > 1.6 * speech.speak(text, "espeak-en").seconds


def test_other_languages_through_espeak(tmp_path: Path) -> None:
    fr = speech.speak("Bonjour à tous, je suis très content d'être ici aujourd'hui.", language="fr")
    assert fr.voice.name == "espeak-fr" and fr.voice.engine == "espeak"
    assert 2.0 < fr.seconds < 7.0 and speech_fraction(fr.audio, fr.sample_rate) > 0.4
    ru = speech.speak("Привет, как у тебя дела?", "espeak-ru")
    assert ru.seconds > 1.0
    wav16 = read_audio(fr.write_wav(tmp_path / "fr.wav"))
    assert len([s for s in decode_phones(wav16) if s.phone != "SIL"]) >= 15
    names = [v.name for v in speech.voices()]
    assert names[0] == "joe" and {"espeak-fr", "espeak-de", "espeak-ko"} <= set(names)


def test_text_never_reaches_a_shell_or_the_options(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for voice in ("joe", "espeak-en"):
        sp = speech.speak("--help; $(touch pwned) `touch pwned` | echo hi", voice)
        assert sp.seconds > 1.0  # spoken as text, not taken as an option
    assert not (tmp_path / "pwned").exists() and os.listdir(tmp_path) == []


@pytest.mark.parametrize("text, voice, language, rate, code, words", [
    ("", None, None, 1.0, "empty_text", "no text"),
    ("  \n\t  ", None, None, 1.0, "empty_text", "no text"),
    (None, None, None, 1.0, "empty_text", "no text"),
    ("a" * 601, None, None, 1.0, "text_too_long", "601 characters"),
    ("Hello 😀 world", None, None, 1.0, "unsayable", "grinning face"),
    ("你好, hello", None, None, 1.0, "unsayable", "cjk letters (“你”, “好”)"),
    ("Hello\x00there", None, None, 1.0, "unsayable", "U+0000"),
    ("Bonjour hello", None, "ru", 1.0, "unsayable", "latin letters (“B”, “o”, “n”, “j”, ...)"),
    ("?!... ---", None, None, 1.0, "unsayable", "no words"),
    ("Hello", "bob", None, 1.0, "unknown_voice", "no voice named “bob”"),
    ("Hello", None, "zh", 1.0, "no_voice_for_language", "“zh”"),
    ("Hello", None, "xx-YY", 1.0, "no_voice_for_language", "“xx-YY”"),
    ("Hello", "joe", "fr", 1.0, "wrong_voice", "speaks en-US"),
    ("Hello", None, None, 3.0, "bad_rate", "between 0.5 and 2"),
    ("Hello", None, None, "fast", "bad_rate", "between 0.5 and 2"),
])
def test_bad_input_named(text, voice, language, rate, code, words) -> None:
    with pytest.raises(InputError) as e:
        speech.speak(text, voice, language, rate)
    assert e.value.code == code and words.lower() in str(e.value).lower(), str(e.value)
    assert e.value.fix


def test_limit_is_inclusive_and_white_space_normalised() -> None:
    v = speech.pick_voice()
    assert speech.check_text("a" * speech.MAX_CHARS, v) == "a" * speech.MAX_CHARS
    assert speech.check_text("  Hello,\n\n  world!  ", v) == "Hello, world!"
    assert speech.check_text("Café déjà vu, 3 € ou 4 $.", v)  # accents, digits, currency


def test_missing_engine_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setattr(speech, "_espeak_program", lambda: None)
    with pytest.raises(InputError) as e:
        speech.speak("Bonjour", language="fr")
    assert e.value.code == "missing_dependency" and "espeak-ng" in str(e.value)
    assert "espeak-fr" not in [v.name for v in speech.voices()]


def test_espeak_wav_stream_parser() -> None:
    pcm = (np.sin(np.arange(2205) / 5) * 8000).astype("<i2")
    header = (b"RIFF" + (0x7FFFFFFF).to_bytes(4, "little") + b"WAVEfmt " + (16).to_bytes(4, "little")
              + (1).to_bytes(2, "little") + (1).to_bytes(2, "little") + (22050).to_bytes(4, "little")
              + (44100).to_bytes(4, "little") + (2).to_bytes(2, "little") + (16).to_bytes(2, "little")
              + b"data" + (0x7FFFFFFF).to_bytes(4, "little"))
    audio, sr = speech._parse_wav_stream(header + pcm.tobytes())
    assert sr == 22050 and np.allclose(audio * 32768, pcm)
    with pytest.raises(RuntimeError):
        speech._parse_wav_stream(b"not a wav at all" * 4)


def test_wav_round_trip(tmp_path: Path) -> None:
    sp = speech.Speech(np.linspace(-1, 1, 22050, dtype=np.float32), 22050,
                       speech.VOICES["joe"], "x")
    back = read_audio(sp.write_wav(tmp_path / "x.wav"), 22050)
    assert back.shape == (22050,) and np.abs(back - sp.audio).max() < 2e-4
    assert os.listdir(tmp_path) == ["x.wav"]  # atomic: no temporary left behind
