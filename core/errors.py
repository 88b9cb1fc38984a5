"""User-facing input errors: each names the problem and what to do about it."""
from __future__ import annotations


class InputError(ValueError):
    """A user-supplied file cannot be used.

    Attributes:
        code: short machine-readable reason, one of ``unreadable``, ``no_video``,
            ``no_audio``, ``no_face``, ``multiple_faces``, ``face_lost``,
            ``too_short``, ``too_long``, ``too_large``, ``timing``, ``truncated``,
            ``wrong_weights``, ``corrupt``, ``missing_dependency``; for typed text
            (:mod:`core.data.speech`) ``empty_text``, ``text_too_long``, ``unsayable``,
            ``unknown_voice``, ``wrong_voice``, ``no_voice_for_language``, ``bad_rate``,
            ``no_speech``.
        problem: what is wrong, in plain words.
        fix: what the user can do.
    """

    def __init__(self, code: str, problem: str, fix: str) -> None:
        self.code = code
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} {fix}")

    def __reduce__(self):
        """Picklable with its three fields (it crosses process boundaries: worker pools,
        a GPU worker), which ``ValueError``'s default would not rebuild."""
        return (type(self), (self.code, self.problem, self.fix))
