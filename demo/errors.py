"""How failures reach the user: an :class:`InputError` becomes a ``gr.Error`` with the problem
and the fix; anything unexpected is logged under a short reference and shown without a
stack trace."""
from __future__ import annotations

import logging
import secrets
import traceback

import gradio as gr

from core.errors import InputError

log = logging.getLogger("instag.app")

#: Toast titles by ``InputError.code``.
TITLES = {"no_audio": "No audio in the clip", "no_face": "No face found",
          "multiple_faces": "More than one face", "face_lost": "Face not tracked",
          "too_short": "Too short", "too_long": "Too long", "unreadable": "Not a usable file",
          "no_video": "Not a video", "wrong_weights": "Model weights missing",
          "corrupt": "Damaged avatar", "timing": "Broken timestamps",
          "too_large": "Frames too large", "truncated": "File cut short",
          "empty_text": "No text", "text_too_long": "Text too long",
          "unsayable": "The voice cannot say this", "unknown_voice": "No such voice",
          "wrong_voice": "Voice and language differ", "no_voice_for_language": "No voice for this language",
          "bad_rate": "Speaking rate out of range", "no_speech": "No speech produced",
          "missing_dependency": "Voice not installed"}


def user_error(e: InputError) -> gr.Error:
    """An :class:`InputError` as a UI error: the problem and the fix, no stack trace. Its
    message alone carries both, so it survives pickling (ZeroGPU's worker boundary)."""
    return gr.Error(f"{e.problem} {e.fix}", title=TITLES.get(e.code, "Cannot use this file"),
                    duration=None, print_exception=False)


def internal_error(job: str, message: str) -> tuple[str, gr.Error]:
    """Log the exception being handled under a short reference; return the reference and the
    UI error (``message`` may use ``{ref}``), which shows no stack trace."""
    ref = secrets.token_hex(4)
    log.error("%s failed (ref %s):\n%s", job, ref, traceback.format_exc())
    return ref, gr.Error(message.format(ref=ref), title="Internal error", print_exception=False)
