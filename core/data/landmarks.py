"""FaceMesh landmarks of a clip: detection, the landmark index sets, face-count checks.

One concept: *where the face's 478 points are* in every frame.

Small faces: FaceMesh's own (short-range) detector misses faces that are small in the frame
(0 % of the frames of the test clip ``short/face_mostly_absent_4s.mp4``, at 427x640 and at
full size). :func:`detect_landmarks` therefore can also run MediaPipe's full-range face
detector, whose box places the crop (:mod:`core.data.crop`); inside the crop the face is
large and FaceMesh tracks it (99 % of the frames of that clip).

Landmark pixel convention: FaceMesh returns normalised image coordinates; we
multiply by the frame width/height, so a landmark at ``(u, v)`` lies in the
continuous image plane where pixel ``(i, j)`` has its centre at ``(i+0.5, j+0.5)``
(the project convention in ``core/__init__.py``).  ``z`` is FaceMesh's relative
depth multiplied by the frame *width* (FaceMesh scales z like x), positive
away from the camera.
"""
from __future__ import annotations

import os

os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import contextlib
import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from core.errors import InputError

N_LANDMARKS = 478

# ---------------------------------------------------------------------------
# Landmark index sets (MediaPipe FaceMesh 468 + 10 iris points with refine_landmarks)
# ---------------------------------------------------------------------------
#: Landmarks that move with the skull only, not with expression: forehead, nose
#: bridge/tip, eye corners, upper face contour (temples, cheekbones). No lips, jaw, chin,
#: eyelids or brows. Every rigid (similarity) fit of the project uses them: the head pose,
#: pose-free expression signals, the retrieval baseline's head alignment.
SKULL_LANDMARKS: tuple[int, ...] = (
    # forehead / glabella
    10, 151, 9, 8, 109, 338, 67, 297, 108, 337, 69, 299, 104, 333,
    # nose bridge and tip, nostrils' upper part
    168, 6, 197, 195, 5, 4, 1, 45, 275, 220, 440, 48, 278,
    # eye corners (not the lids)
    33, 133, 362, 263, 130, 359, 243, 463,
    # upper face contour: temples and cheekbones
    21, 251, 54, 284, 103, 332, 162, 389, 127, 356, 234, 454, 93, 323,
    116, 345, 123, 352, 117, 346,
)


# ---------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------
@dataclass
class DetectConfig:
    """FaceMesh settings for :func:`detect_landmarks`.

    Attributes:
        max_num_faces: faces FaceMesh may report per frame. 2 so that a second
            person is noticed (with fewer tracked faces than this, FaceMesh
            re-runs its detector on every frame).
        min_detection_confidence: FaceMesh face-detector threshold.
        min_tracking_confidence: below this, FaceMesh re-detects instead of tracking.
        static_image_mode: False = video mode (temporal tracking between frames).
        refine_landmarks: True = 478 points (adds the 10 iris points).
        detector_boxes: also run MediaPipe's full-range face detector
            (``face_detection`` model 1, faces up to ~5 m) on every frame and
            keep its box. It finds small faces that FaceMesh's own short-range
            detector misses, so :func:`core.data.crop.choose_crop` can place the crop even
            when FaceMesh fails on the full frame ("crop, re-detect").
            About 2-3 ms per 640 px frame.
        detector_confidence: score threshold of that detector.
    """

    max_num_faces: int = 2
    min_detection_confidence: float = 0.5
    min_tracking_confidence: float = 0.5
    static_image_mode: bool = False
    refine_landmarks: bool = True
    detector_boxes: bool = True
    detector_confidence: float = 0.5


@dataclass
class LandmarkTrack:
    """FaceMesh landmarks of one clip.

    Attributes:
        points: (T, 478, 3) float32. x, y in pixels of the frames that were
            processed; z relative depth in the same pixel scale as x (positive
            away from the camera). Rows where ``valid`` is False are NaN.
        valid: (T,) bool, a face was found in that frame.
        num_faces: (T,) int, number of faces FaceMesh reported (0, 1 or 2).
        width, height: size of the processed frames in pixels.
        det_boxes: (T, 4) float32 ``x0, y0, x1, y1`` pixel boxes from the
            full-range face detector (NaN where it found nothing or was not
            run). Its box is about the size of the landmark box (measured
            ratio 0.93-1.02 on six clips), centred on it.
    """

    points: np.ndarray
    valid: np.ndarray
    num_faces: np.ndarray
    width: int
    height: int
    det_boxes: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.points.shape[0])

    @property
    def found_fraction(self) -> float:
        """Fraction of frames with a face (0 for an empty clip)."""
        return float(self.valid.mean()) if len(self) else 0.0

    def filled(self) -> np.ndarray:
        """(T, 478, 3) float32 landmarks with missing frames filled.

        Missing frames are linearly interpolated per coordinate between the
        nearest valid frames before and after; frames before the first / after
        the last valid frame copy that frame (constant extrapolation).
        Raises ValueError if no frame is valid.
        """
        if not self.valid.any():
            raise ValueError("no valid frame to interpolate from")
        t = np.arange(len(self))
        good = np.flatnonzero(self.valid)
        flat = self.points.reshape(len(self), -1)
        out = np.empty_like(flat)
        for j in range(flat.shape[1]):
            out[:, j] = np.interp(t, good, flat[good, j])
        return out.reshape(self.points.shape).astype(np.float32)

    def boxes(self) -> np.ndarray:
        """(T, 4) float32 landmark bounding boxes ``x0, y0, x1, y1`` (NaN if missing)."""
        p = self.points[..., :2]
        return np.concatenate([p.min(1), p.max(1)], axis=1).astype(np.float32)

    def face_boxes(self) -> np.ndarray:
        """(T, 4) float32 face boxes: the landmark box where FaceMesh found the
        face, else the detector box, else NaN."""
        b = self.boxes()
        if self.det_boxes is not None:
            miss = ~self.valid
            b[miss] = self.det_boxes[miss]
        return b

    @property
    def located(self) -> np.ndarray:
        """(T,) bool, a face box is known (FaceMesh or detector)."""
        return ~np.isnan(self.face_boxes()[:, 0])


@contextlib.contextmanager
def quiet_native_logs():
    """Silence MediaPipe's native (absl/TFLite) start-up messages on fd 2.

    They are printed when a graph is built and on its first frame, and ignore
    GLOG_minloglevel; wrap those two calls only (Python errors still raise).
    """
    try:
        fd = os.dup(2)
    except OSError:  # no fd 2 (some embedded runners)
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(fd, 2)
        os.close(fd)


def _face_mesh(cfg: DetectConfig):
    import mediapipe as mp  # imported lazily: slow import, noisy logs

    return mp.solutions.face_mesh.FaceMesh(
        static_image_mode=cfg.static_image_mode,
        max_num_faces=cfg.max_num_faces,
        refine_landmarks=cfg.refine_landmarks,
        min_detection_confidence=cfg.min_detection_confidence,
        min_tracking_confidence=cfg.min_tracking_confidence,
    )


def detect_landmarks(frames: Iterable[np.ndarray], cfg: DetectConfig | None = None) -> LandmarkTrack:
    """Run MediaPipe FaceMesh over a clip.

    Args:
        frames: iterable of (H, W, 3) uint8 RGB frames, all the same size, in
            temporal order (video mode tracks between consecutive frames).
        cfg: detector settings (defaults: :class:`DetectConfig`).

    Returns:
        :class:`LandmarkTrack`. When two faces are reported, the one kept is the
        one closest to the previous kept face (the largest one if there is no
        previous face).
    """
    cfg = cfg or DetectConfig()
    pts_list: list[np.ndarray] = []
    nf_list: list[int] = []
    w = h = 0
    prev_centre: np.ndarray | None = None
    nan = None
    det_list: list[np.ndarray] = []
    it = iter(frames)
    head = next(it, None)  # read before building the graphs: their start-up logs are async
    if head is None:
        return LandmarkTrack(np.zeros((0, N_LANDMARKS, 3), np.float32), np.zeros(0, bool),
                             np.zeros(0, np.int64), 0, 0, None)
    with quiet_native_logs():
        det = _face_detector(cfg) if cfg.detector_boxes else None
        mesh = _face_mesh(cfg)
    # native models log when they first run (the landmark model: at the first
    # face) and asynchronously: stay quiet until 0.5 s after the first face
    quiet, t_face = True, None
    with mesh, (det if det is not None else contextlib.nullcontext()):
        for frame in itertools.chain([head], it):
            frame = np.ascontiguousarray(frame)
            if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
                raise ValueError(f"expected (H, W, 3) uint8 frames, got {frame.shape} {frame.dtype}")
            h, w = frame.shape[:2]
            if nan is None:
                nan = np.full((N_LANDMARKS, 3), np.nan, np.float32)
            with quiet_native_logs() if quiet else contextlib.nullcontext():
                if det is not None:
                    det_list.append(_best_detection(det.process(frame), w, h, prev_centre))
                res = mesh.process(frame)
            if quiet:
                if t_face is None and res.multi_face_landmarks:
                    t_face = time.monotonic()
                quiet = t_face is None or time.monotonic() - t_face < 0.5
            faces = res.multi_face_landmarks or []
            cands = []
            for face in faces:
                a = np.array([(l.x, l.y, l.z) for l in face.landmark], np.float32)
                if a.shape[0] != N_LANDMARKS:
                    continue
                a[:, 0] *= w
                a[:, 1] *= h
                a[:, 2] *= w
                cands.append(a)
            nf_list.append(len(cands))
            if not cands:
                pts_list.append(nan)
                continue
            if len(cands) > 1:
                if prev_centre is not None:
                    d = [np.linalg.norm(c[:, :2].mean(0) - prev_centre) for c in cands]
                    best = cands[int(np.argmin(d))]
                else:
                    sizes = [np.ptp(c[:, 0]) * np.ptp(c[:, 1]) for c in cands]
                    best = cands[int(np.argmax(sizes))]
            else:
                best = cands[0]
            prev_centre = best[:, :2].mean(0)
            pts_list.append(best)
    T = len(pts_list)
    points = np.stack(pts_list) if T else np.zeros((0, N_LANDMARKS, 3), np.float32)
    valid = ~np.isnan(points[:, 0, 0]) if T else np.zeros(0, bool)
    det_boxes = np.stack(det_list).astype(np.float32) if det_list else None
    return LandmarkTrack(points.astype(np.float32), valid, np.asarray(nf_list, np.int64), int(w), int(h), det_boxes)


def _face_detector(cfg: DetectConfig):
    import mediapipe as mp

    return mp.solutions.face_detection.FaceDetection(
        model_selection=1, min_detection_confidence=cfg.detector_confidence
    )


def _best_detection(res, w: int, h: int, prev_centre: np.ndarray | None) -> np.ndarray:
    """Box (4,) of the detection nearest the previous face (else highest score); NaN if none."""
    dets = res.detections or []
    if not dets:
        return np.full(4, np.nan, np.float32)
    boxes = []
    for d in dets:
        b = d.location_data.relative_bounding_box
        boxes.append((b.xmin * w, b.ymin * h, (b.xmin + b.width) * w, (b.ymin + b.height) * h))
    boxes_a = np.asarray(boxes, np.float32)
    if prev_centre is not None and len(dets) > 1:
        c = (boxes_a[:, :2] + boxes_a[:, 2:]) / 2
        return boxes_a[int(np.argmin(np.linalg.norm(c - prev_centre, axis=1)))]
    scores = [d.score[0] if d.score else 0.0 for d in dets]
    return boxes_a[int(np.argmax(scores))]


# ---------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------
@dataclass
class FaceCheckConfig:
    """Thresholds for :func:`check_faces`.

    Attributes:
        max_multi_fraction: refuse with ``multiple_faces`` when more than this
            fraction of frames show two or more faces (a brief false detection
            in a frame or two is tolerated).
        max_lost_fraction: refuse with ``face_lost`` when the face is missing
            in more than this fraction of frames.
    """

    max_multi_fraction: float = 0.1
    max_lost_fraction: float = 0.2


def check_faces(track: LandmarkTrack, cfg: FaceCheckConfig | None = None, check_lost: bool = True) -> None:
    """Refuse clips without exactly one, steadily visible face.

    Raises:
        InputError('no_face'): no face in any frame (with ``check_lost=False``
            a full-range detector box also counts as a face).
        InputError('multiple_faces'): >= 2 faces in more than
            ``cfg.max_multi_fraction`` of the frames.
        InputError('face_lost'): (only if ``check_lost``) the face is missing in
            more than ``cfg.max_lost_fraction`` of the frames. Use
            ``check_lost=False`` on the full-frame pass 1 (a small face is
            re-detected inside the crop in pass 2) and True on pass 2.

    An accepted clip may still miss the face in a few frames;
    :meth:`LandmarkTrack.filled` interpolates them.
    """
    cfg = cfg or FaceCheckConfig()
    T = len(track)
    found = track.valid if check_lost else track.located
    if T == 0 or not found.any():
        raise InputError(
            "no_face",
            "No face was found in the video.",
            "Make sure your face is visible and well lit, facing the camera.",
        )
    multi = float((track.num_faces >= 2).mean())
    if multi > cfg.max_multi_fraction:
        raise InputError(
            "multiple_faces",
            f"More than one face is visible in {multi:.0%} of the frames.",
            "Record a video with only you in the picture.",
        )
    if check_lost:
        lost = 1.0 - track.found_fraction
        if lost > cfg.max_lost_fraction:
            raise InputError(
                "face_lost",
                f"The face could not be tracked in {lost:.0%} of the frames "
                f"(at most {cfg.max_lost_fraction:.0%} is allowed).",
                "Record with a steadier framing: keep your face in the picture, facing the camera, "
                "and close enough that it fills a good part of the frame.",
            )
