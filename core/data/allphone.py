"""pocketsphinx allphone decoding, in this process or in a child process of its own.

pocketsphinx's Python binding holds the interpreter lock for the whole of a decode (about
0.05 s of CPU per second of audio): while it decodes a minute of speech, no other Python
thread of the process runs for three seconds (the app's server, other visitors' renders, a
streamed Talk's first frames). :func:`decode_pcm` therefore decodes long audio in a child
process (``python -m core.data.allphone``: the same decoder and settings, so the same
segments; about 0.15 s to start), and short audio here, where starting a process would
cost more than the decode.

This module imports nothing heavy, so the child starts quickly.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

from core.project import python_path

log = logging.getLogger(__name__)

#: Audio longer than this (s) is decoded in a child process.
CHILD_PROCESS_SECONDS = 8.0
#: A child decode taking longer than this (s per second of audio, plus 30 s) is stopped.
CHILD_TIMEOUT_PER_SECOND = 2.0

Segment = tuple[str, int, int]


def decode_here(pcm: bytes, args: dict) -> list[Segment]:
    """Decode 16 kHz int16 mono ``pcm`` with a pocketsphinx ``Decoder(**args)`` in this
    process: (phone, first 10 ms frame, last 10 ms frame) per segment."""
    from pocketsphinx import Decoder

    dec = Decoder(**args)
    dec.start_utt()
    dec.process_raw(pcm, full_utt=True)
    dec.end_utt()
    return [(s.word, int(s.start_frame), int(s.end_frame)) for s in dec.seg()]


def decode_in_child(pcm: bytes, args: dict) -> list[Segment]:
    """:func:`decode_here` in a child process (the pcm on its stdin, the segments as JSON on
    its stdout). Raises RuntimeError when the child fails or runs out of time."""
    seconds = len(pcm) / 32000
    env = {**os.environ, "PYTHONPATH": python_path()}
    try:
        r = subprocess.run([sys.executable, "-m", "core.data.allphone", json.dumps(args)],
                           input=pcm, capture_output=True, env=env,
                           timeout=30.0 + CHILD_TIMEOUT_PER_SECOND * seconds)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"the phone decoder's process failed: {e}") from e
    if r.returncode != 0:
        raise RuntimeError("the phone decoder's process failed: "
                           + r.stderr.decode("utf-8", "replace")[-500:])
    return [(str(p), int(a), int(b)) for p, a, b in json.loads(r.stdout)]


def decode_pcm(pcm: bytes, args: dict) -> list[Segment]:
    """Decode ``pcm`` (16 kHz int16 mono): in a child process when it is longer than
    :data:`CHILD_PROCESS_SECONDS` (so this process's other threads keep running), else
    here (also where there is no Python executable to start, e.g. an embedded
    interpreter). A child that cannot start or fails is logged and the decode done here."""
    if len(pcm) / 32000 <= CHILD_PROCESS_SECONDS or not sys.executable:
        return decode_here(pcm, args)
    try:
        return decode_in_child(pcm, args)
    except RuntimeError as e:
        log.warning("%s; decoding in this process instead", e)
        return decode_here(pcm, args)


def main() -> int:
    """Child process: decoder settings (JSON) as the argument, pcm on stdin, segments
    (JSON) on stdout."""
    args = json.loads(sys.argv[1])
    pcm = sys.stdin.buffer.read()
    sys.stdout.write(json.dumps(decode_here(pcm, args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
