"""Text-to-speech speed and intelligibility, the voices side by side in one run.

    python -m bench.tts [--cores 2] [--voices joe espeak-en espeak-fr] [--repeats 3]

Speed: the real-time factor (synthesis seconds per second of speech; below 1 is faster than
real time) of a ~12 s English paragraph (a French one for non-English voices), the median of
``--repeats`` runs after one warm-up, with the process pinned to ``--cores`` CPU cores, and
the first call (loading the voice + one synthesis). Intelligibility (English voices): the
word error rate of the pocketsphinx recogniser (its shipped en-us model and language model,
nothing trained on these voices) on five Harvard sentences: a rough, voice-independent proxy
of how clearly the words come out.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from core.data import speech

PARAGRAPH = {
    "en": ("Thank you all for coming today. I would like to tell you a little about how this "
           "project started, what we have learned along the way, and where we hope to go next. "
           "It began with a simple question: could a few seconds of video be enough?"),
    "fr": ("Merci à tous d'être venus aujourd'hui. Je voudrais vous raconter comment ce projet "
           "a commencé, ce que nous avons appris en chemin, et où nous espérons aller ensuite."),
}
SENTENCES = [
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It is easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
]


def word_error_rate(ref: str, hyp: str) -> float:
    """Levenshtein distance over words / reference words (case and punctuation ignored)."""
    norm = lambda s: "".join(c.lower() if c.isalnum() or c == "'" else " " for c in s).split()  # noqa: E731
    r, h = norm(ref), norm(hyp)
    d = list(range(len(h) + 1))
    for i, rw in enumerate(r, 1):
        prev, d[0] = d[0], i
        for j, hw in enumerate(h, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (rw != hw))
    return d[len(h)] / max(len(r), 1)


def recognise(audio16: np.ndarray) -> str:
    """pocketsphinx's default English recogniser on 16 kHz mono float audio."""
    from pocketsphinx import Decoder

    dec = Decoder(loglevel="FATAL")
    dec.start_utt()
    dec.process_raw((np.clip(audio16, -1, 1) * 32767).astype("<i2").tobytes(), full_utt=True)
    dec.end_utt()
    return dec.hyp().hypstr if dec.hyp() else ""


def to16k(sp: speech.Speech) -> np.ndarray:
    from scipy.signal import resample_poly

    g = np.gcd(16000, sp.sample_rate)
    return resample_poly(sp.audio, 16000 // g, sp.sample_rate // g).astype(np.float32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--voices", nargs="+", default=["joe", "espeak-en", "espeak-fr"])
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    cores = sorted(os.sched_getaffinity(0))[: a.cores]
    os.sched_setaffinity(0, cores)  # before onnxruntime sizes its thread pool
    print(f"pinned to {len(cores)} core(s) {cores} of {os.cpu_count()}")
    print(f"{'voice':>10} {'first s':>7} {'speech s':>9} {'synth s':>8} {'RTF':>6} {'WER':>6}")
    for name in a.voices:
        v = speech.VOICES[name]
        t0 = time.perf_counter()
        text = PARAGRAPH.get(v.primary_language, PARAGRAPH["en"])
        sp = speech.speak(text, v)  # loads the voice, warms up
        load = time.perf_counter() - t0
        times = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            sp = speech.speak(text, v)
            times.append(time.perf_counter() - t0)
        synth = statistics.median(times)
        wer = float("nan")
        if v.primary_language == "en":
            errs = [word_error_rate(s, recognise(to16k(speech.speak(s, v)))) for s in SENTENCES]
            wer = float(np.mean(errs))
        print(f"{name:>10} {load:>7.2f} {sp.seconds:>9.2f} {synth:>8.2f} "
              f"{synth / sp.seconds:>6.3f} {wer:>6.2f}")


if __name__ == "__main__":
    main()
