"""Shared test fixtures: the real clips and audio live in ../shared/data (never copied here)."""
from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"shared test data not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def clips_dir(data_dir: Path) -> Path:
    return data_dir / "clips"


@pytest.fixture(scope="session")
def audio_dir(data_dir: Path) -> Path:
    return data_dir / "audio"


@pytest.fixture(scope="session")
def short_dir(data_dir: Path) -> Path:
    return data_dir / "short"


#: Under pytest-xdist the workers already use every core: each worker, and every process it
#: starts (the app in its own process, benchmark cells, Ray workers), gets one thread per
#: thread pool. More threads than cores make OpenMP's pools spin-wait against each other,
#: which cost more CPU time than the parallel workers saved.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[_var] = "1"


#: The slowest test modules, slowest first (their measured time in the suite with two
#: workers: docs/ARCHITECTURE.md, "Tests"). xdist hands each worker a whole module at a
#: time in collection order (``--dist loadscope --no-loadscope-reorder`` in pytest.ini), so
#: these start first and the many short modules fill in at the end, instead of one worker
#: starting the slowest module when the other has nothing left to do. The rest keep their
#: alphabetical order.
SLOWEST_FIRST = ("test_benchmark", "test_lips", "test_browser", "test_app", "test_ray",
                 "test_model", "test_app_refine", "test_load", "test_preprocess",
                 "test_device", "test_full_frame", "test_seams")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    """Run the slowest modules first (:data:`SLOWEST_FIRST`); a stable sort keeps the
    order of the tests inside each module."""
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread in each xdist worker (see above), also when torch was imported
    before this file set the environment."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def shared_phone_decodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One folder of phone decodes for the whole test run (``$INSTAG_PHONE_CACHE``, see
    :func:`core.data.phones.decode_phones`), shared by the xdist workers and the processes
    they start: the same seconds of the same clips are decoded by many tests, and each
    decode is the same whoever makes it. The decoder itself is tested with the cache
    unset (``tests/test_allphone.py``)."""
    from core.data.phones import PHONE_CACHE_ENV

    if os.environ.get(PHONE_CACHE_ENV):   # the caller chose a folder
        yield Path(os.environ[PHONE_CACHE_ENV])
        return
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "phone_decodes"
    folder.mkdir(exist_ok=True)
    os.environ[PHONE_CACHE_ENV] = str(folder)
    try:
        yield folder
    finally:
        os.environ.pop(PHONE_CACHE_ENV, None)


# ---------------------------------------------------------------- shared per test session
# One small processed clip, one tiny prior and one tiny avatar per session, built on first
# use and shared by the tests that only read them (a test that changes files works on its
# own copy or in its own tmp_path; the session fails if one writes into them). Same settings
# as the modules used before sharing them. With several xdist workers the first worker to
# need one builds it and the others wait for it and read the same folder (_built_once).

def _built_once(factory: pytest.TempPathFactory, name: str,
                build: Callable[[Path], object]) -> Path:
    """The folder ``name`` filled by ``build(folder)`` once per test run.

    Without xdist: a fresh temporary folder. Under xdist: a folder in the run's temporary
    root shared by all workers, built by the first worker under a file lock; a build that
    failed half-way is started again by the next worker that needs it."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        folder = factory.mktemp(name)
        build(folder)
        return folder
    from filelock import FileLock

    folder = factory.getbasetemp().parent / f"shared_{name}"
    done = folder.with_name(folder.name + ".done")
    with FileLock(str(folder) + ".lock"):
        if not done.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Relative path -> (size, mtime in ns) of every file under ``folder``."""
    return {str(f.relative_to(folder)): (f.stat().st_size, f.stat().st_mtime_ns)
            for f in sorted(folder.rglob("*")) if f.is_file()}


@contextlib.contextmanager
def _read_only(folder: Path) -> Iterator[None]:
    """Fail (at the end of the session) if a test changed a file under ``folder``."""
    before = _snapshot(folder)
    yield
    assert _snapshot(folder) == before, f"a test wrote into the shared {folder}"


#: may_5s as the tiny avatar trains on it: the first 3 s (75 frames) at 128².
TINY_CLIP_FRAMES, TINY_CLIP_RES = 75, 128
#: The two other people the tiny prior is pre-trained on.
PRIOR_PEOPLE = ("man_suit_5s", "vox_input_00010_224")


@pytest.fixture(scope="session")
def tiny_clips(clips_dir: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Processed-clip folders of may_5s and the prior's two people, 75 frames at 128²."""
    from core.data.preprocess import PreprocessConfig, preprocess

    from dataclasses import replace

    names = ("may_5s", *PRIOR_PEOPLE)
    cfg = PreprocessConfig(res=TINY_CLIP_RES, max_frames=TINY_CLIP_FRAMES)
    # only may_5s keeps its recorded frames (its avatar renders full frames); the prior's
    # people are pre-training data and skip that encode
    root = _built_once(tmp_path_factory, "tiny_clips", lambda d: [
        preprocess(clips_dir / f"{name}.mp4", d / name,
                   cfg if name == "may_5s" else replace(cfg, full_frame=False))
        for name in names])
    clips = {name: root / name for name in names}
    with _read_only(root):
        yield clips


@pytest.fixture(scope="session")
def may_clip(tiny_clips: dict[str, Path]) -> Path:
    """The session's processed may_5s (75 frames, 128²); read it, never write into it."""
    return tiny_clips["may_5s"]


@pytest.fixture(scope="session")
def tiny_prior(tiny_clips: dict[str, Path],
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A prior pre-trained with the ``tiny`` preset on two people (its training state stays
    in ``work/`` beside it)."""
    from core.train.pretrain import PRESETS, pretrain

    root = _built_once(tmp_path_factory, "tiny_prior", lambda d: pretrain(
        [tiny_clips[n] for n in PRIOR_PEOPLE], d / "prior.safetensors", PRESETS["tiny"],
        work=d / "work"))
    prior = root / "prior.safetensors"
    with _read_only(root):
        yield prior


@pytest.fixture(scope="session")
def tiny_avatar(may_clip: Path, tiny_prior: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """may_5s's avatar adapted from the tiny prior with the ``tiny`` preset on its first 3 s."""
    from dataclasses import replace

    from core.train.adapt import PRESETS, adapt

    root = _built_once(tmp_path_factory, "tiny_avatar", lambda d: adapt(
        may_clip, d / "may", tiny_prior, replace(PRESETS["tiny"], seconds=3.0)))
    out = root / "may"
    with _read_only(out):
        yield out


@dataclass
class CliRun:
    """What a command line wrote: its output folder and what it printed (stdout)."""

    out: Path
    printed: str


@pytest.fixture(scope="session")
def may_cli(clips_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliRun]:
    """may_5s.mp4 in full through ``python -m core.preprocess`` at the CPU default 256² (the
    README's first command); read it, never write into it."""
    import io

    from core.preprocess import main

    def build(folder: Path) -> None:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            code = main([str(clips_dir / "may_5s.mp4"), "--out", str(folder / "may_5s"),
                         "--res", "256"])
        assert code == 0
        (folder / "printed.txt").write_text(buf.getvalue())

    root = _built_once(tmp_path_factory, "may_cli", build)
    out = root / "may_5s"
    with _read_only(out):
        yield CliRun(out, (root / "printed.txt").read_text())
