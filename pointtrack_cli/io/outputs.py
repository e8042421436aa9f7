"""Output sets: the files of one run appear together, or the folder says that they did not (manifest last).

One set per output folder for ``ptrack track`` / ``ptrack ensemble`` (``--out``), one per video for
``eval tapvid --save-predictions`` (several sets share that folder, each with its own manifest), and one per
video's subfolder for batch runs. A set in folder ``OUT`` with manifest ``M`` (``ptrack.json`` by default)::

    OUT/tracks.npz ...          the files the run was asked for (plain names, no folders)
    OUT/M                       the manifest, written last: format, ptrack version, job key and job, and
                                every file with its size and sha256
    OUT/anything else           never touched (files ptrack did not write)

**Complete** means: ``M`` reads and every file it lists has its size (readers) and sha256 (the rerun decision).
**Incomplete** means: no ``M`` but a staging folder ``OUT/.M.staging-<random>/`` (see below): readers refuse
such a set (:func:`~pointtrack_cli.result.check_set_member`, beside the file formats in ``result.py``), the next
run replaces it. A folder without either holds no set of this ptrack (files of other tools, or of a ptrack from
before manifests): readers accept such files as they always did.

The rerun rule (:meth:`OutputSet.decide`): the job key (a digest of everything that determines the files:
inputs' identity, model and weights, queries, options, the files asked for; computed by the caller before the
long work) of a complete set equal to this run's: skip (nothing is written). Another job's complete set:
refused unless ``overwrite``, which replaces it (its files this run does not write are removed too).

Writing a set, step by step, and what a crash at each step leaves ("crash": SIGKILL or a power cut, where no
cleanup runs; the exceptions of a failed write, Ctrl-C and SIGTERM are handled below):

1. :meth:`OutputSet.open`: create ``OUT`` if needed (the folders created are remembered), lock it (``flock``: a
   second run into the same folder is refused while this one works), read ``M``, create the staging folder,
   then remove stale staging folders of ``M`` and stale temporary files (``.<stem>.<random>.tmp<suffix>``) of
   the names this set may own. *Crash*: the previous set untouched; an empty staging folder (removed next run).
2. :meth:`OutputSet.path`: each file is written inside the staging folder under its final name. *Crash*: the
   previous set untouched (still complete if it was); partial files in the staging folder, removed next run.
3. :meth:`OutputSet.commit` (milliseconds: renames and one small file):

   a. staged files are fsynced, checksummed, and ``journal.json`` (staging folder) lists every name the set
      owns: the previous manifest's files, this run's, and those of an earlier interrupted commit.
      *Crash*: as in 2.
   b. ``M`` is removed (and the folder fsynced). *Crash from here to e*: no manifest, so the folder is
      incomplete; the journal stays, so readers say so, and the next run removes the names it lists.
   c. each staged file is renamed over its final name (``os.replace``: a file is whole, old or new).
   d. the previous set's files this run does not write are removed.
   e. ``M`` is written (temporary name, fsync, rename, fsync of the folder).
   f. the staging folder is removed. *Crash*: the new set is complete; the staging folder (journal only) is
      removed by the next run, which ignores its journal because ``M`` exists.

So a crash leaves the previous complete set untouched (steps 1 to 3a), or an incomplete set without a
manifest (3b to 3e), or the new complete set (3f). **The remaining window** is 3b to 3e: there the folder holds
neither set complete; it lasts a few renames and a manifest write, and its state is always recognisable (no
``M``, a journal). After a power cut, the fsyncs make the same hold: files are durable before ``M`` goes, ``M``
is durable before the run reports success.

An exception (a :class:`~pointtrack_cli.errors.WriteError` for a full disk, Ctrl-C, SIGTERM as the CLI raises
it) runs :meth:`OutputSet.abort`: before 3b the staging folder is removed and the previous set stays as it was;
from 3b on every name the journal lists is removed (the folder no longer held a complete set), then the staging
folder. Either way the folders this run created are removed if they are empty.

Testing hooks: every step above calls :func:`write_point` with its name (``write:<file>``, ``commit:journal``,
``commit:unlink-manifest``, ``commit:move:<file>``, ``commit:remove:<file>``, ``commit:manifest``,
``commit:cleanup``); with ``PTRACK_FAIL_AT=<name>`` in the environment it raises ``OSError(ENOSPC)`` there.
Tests replace :func:`write_point` to pause a child process at a point and kill it.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import PtrackError, write_error
from ..result import MANIFEST, check_set_member, staging_prefix
from ..version import __version__
from .atomic import atomic_path, fsync_dir, fsync_path
from .identity import file_sha256

try:  # POSIX advisory locks; elsewhere a folder is not locked (documented)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

FORMAT = "ptrack-output-set-v1"
FAIL_ENV = "PTRACK_FAIL_AT"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # plain file names only: a manifest cannot name ../x
_JOURNAL = "journal.json"


def write_point(point: str, path: str | Path) -> None:
    """Called at each named step of writing a set (see the module docstring).

    Raises ``OSError(ENOSPC)`` when ``$PTRACK_FAIL_AT`` names ``point``: tests inject a full disk exactly there.
    """
    if os.environ.get(FAIL_ENV) == point:
        raise OSError(errno.ENOSPC, f"No space left on device (injected by {FAIL_ENV}={point})", str(path))


def _temporary_pattern(names: Iterable[str]) -> re.Pattern:
    """The names :func:`~.atomic.atomic_path` gives temporary files of ``names`` (``.<stem>.<random>.tmp<suffix>``)."""
    alts = "|".join(f"{re.escape(Path(n).stem)}\\.[A-Za-z0-9_]+\\.tmp{re.escape(Path(n).suffix)}" for n in sorted(set(names)))
    return re.compile(f"^\\.(?:{alts})$") if alts else re.compile(r"^(?!)")


def _check_names(names: object, where: Path) -> list[str]:
    if not isinstance(names, list) or not all(isinstance(n, str) and _NAME.match(n) for n in names):
        raise PtrackError(f"{where} is not a ptrack manifest (its file list is damaged): delete it, or choose "
                          "another output folder")
    return names


def read_manifest(path: Path) -> dict | None:
    """The manifest at ``path``, None when there is none; one line when it is not ptrack's (damaged, edited)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise PtrackError(f"cannot read {path}: {exc} (delete it, or choose another output folder)") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("files"), list):
        raise PtrackError(f"{path} is not a ptrack manifest ({FORMAT}): delete it, or choose another output folder")
    _check_names([f.get("name") if isinstance(f, dict) else None for f in data["files"]], path)
    return data


def verify(manifest: dict, folder: Path, *, checksums: bool = False) -> str | None:
    """Why the set ``manifest`` describes is not complete in ``folder`` (None: complete).

    Sizes always; sha256 too with ``checksums`` (reads every file: for the rerun decision, not for readers).
    """
    for f in manifest["files"]:
        p = folder / f["name"]
        try:
            size = p.stat().st_size
        except OSError:
            return f"{f['name']} is missing"
        if size != f.get("size"):
            return f"{f['name']} has {size} bytes, the manifest says {f.get('size')}"
        if checksums and file_sha256(p) != f.get("sha256"):
            return f"{f['name']} differs from the manifest's checksum (changed after it was written)"
    return None


def staging_folders(folder: Path, manifest: str = MANIFEST) -> list[Path]:
    """Staging folders of sets with manifest ``manifest`` in ``folder`` (of runs still writing, or stopped)."""
    if not folder.is_dir():
        return []
    prefix = staging_prefix(manifest)
    return sorted(p for p in folder.iterdir() if p.name.startswith(prefix) and p.is_dir())


def set_state(folder: str | Path, manifest: str = MANIFEST) -> str:
    """``"complete"`` (manifest present), ``"incomplete"`` (no manifest, a staging folder) or ``"none"``."""
    folder = Path(folder)
    if (folder / manifest).is_file():
        return "complete"
    return "incomplete" if staging_folders(folder, manifest) else "none"


check_readable = check_set_member  # the reading side lives with the file formats (``result.py``)


def make_folder(folder: Path) -> list[Path]:
    """Create ``folder`` (and missing parents), check it is a writable folder; returns the folders created,
    outermost first (for :func:`remove_if_empty`)."""
    if folder.exists() and not folder.is_dir():
        raise PtrackError(f"output path {folder} exists and is not a folder (choose another output folder)")
    missing = []
    p = folder
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PtrackError(f"cannot create output folder {folder}: {exc.strerror} (choose another output folder)") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PtrackError(f"output folder {folder} is not writable (choose another output folder)")
    return list(reversed(missing))


def remove_if_empty(created: list[Path]) -> None:
    """Remove the folders a failed run created, innermost first, as long as they are empty."""
    for d in reversed(created):
        with contextlib.suppress(OSError):
            d.rmdir()  # fails (and stays) when anything is in it


@contextlib.contextmanager
def output_folder(folder: str | Path) -> Iterator[Path]:
    """``folder``, created if needed; when the block raises, the folders created here are removed if empty (an
    evaluation that saved some videos' sets keeps them: they are complete and let it resume)."""
    folder = Path(folder)
    created = make_folder(folder)
    try:
        yield folder
    except BaseException:
        remove_if_empty(created)
        raise


def describe_difference(old: dict, new: dict) -> str:
    """The first differing top-level entries of two job descriptions, e.g. ``"model: lk -> protracker"``."""
    diffs = []
    for k in sorted(set(old) | set(new)):
        if old.get(k) != new.get(k):
            a, b = json.dumps(old.get(k), default=str), json.dumps(new.get(k), default=str)
            short = lambda s: s if len(s) <= 60 else s[:57] + "..."  # noqa: E731
            diffs.append(f"{k}: {short(a)} -> {short(b)}")
    return "; ".join(diffs[:2]) + (f" and {len(diffs) - 2} more" if len(diffs) > 2 else "") if diffs else "its job key"


class OutputSet:
    """One set of output files in ``folder``, written as a unit (see the module docstring for every step).

    folder: the output folder (created if needed). manifest: the manifest's name (one set per manifest; several
    sets may share a folder). names: every file name the set may write (for removing their stale temporary
    files). overwrite: replace another job's complete set instead of refusing.

    Use as a context manager: an exception inside aborts (previous set untouched, or, during the commit, the
    incomplete set removed); leaving without :meth:`commit` or a skip aborts as well::

        with OutputSet(out, names=["tracks.npz"]) as outs:
            if outs.decide(key, job):        # the same job's complete set is there
                return outs.files
            with outs.path("tracks.npz") as p:
                np.savez(p, ...)
            outs.commit(key, job)
    """

    def __init__(self, folder: str | Path, *, manifest: str = MANIFEST, names: Iterable[str] = (),
                 overwrite: bool = False) -> None:
        self.folder = Path(folder)
        self.manifest = manifest
        self.manifest_path = self.folder / manifest
        self.names = set(names)
        self.overwrite = overwrite
        self.previous: dict | None = None  # the manifest found at open (None: no complete set)
        self.staging: Path | None = None
        self.skipped = False
        self.files: list[Path] = []  # after commit or a skip: the set's files
        self._created: list[Path] = []  # folders this run created, deepest last
        self._lock_fd: int | None = None
        self._staged: list[str] = []
        self._stale_owned: set[str] = set()  # names an interrupted commit of an earlier run owned
        self._owned: set[str] = set()
        self._committing = False
        self._done = False

    # -- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> "OutputSet":
        return self.open()

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._done:
            self._release()
        else:
            self.abort()

    def open(self) -> "OutputSet":
        """Step 1: create and lock the folder, read the manifest, make the staging folder, clear stale files."""
        try:
            self._created = make_folder(self.folder)
            self._lock()
            self.previous = read_manifest(self.manifest_path)
            stale = staging_folders(self.folder, self.manifest)
            if self.previous is None:  # with a manifest, a stale journal is obsolete (its commit finished)
                for s in stale:
                    self._stale_owned |= set(self._read_journal(s))
            self.staging = self.folder / f"{staging_prefix(self.manifest)}{os.urandom(4).hex()}"
            self.staging.mkdir()
            if self._stale_owned:  # keep what the stale journals knew, before removing them
                self._write_journal(self._stale_owned)
            for s in stale:
                shutil.rmtree(s, ignore_errors=True)
            owned = self.names | self._stale_owned | {self.manifest} | {
                f["name"] for f in (self.previous or {}).get("files", [])}
            pattern = _temporary_pattern(owned)
            for p in self.folder.iterdir():
                if pattern.match(p.name) and p.is_file():
                    p.unlink(missing_ok=True)
        except OSError as exc:
            self.abort()
            raise write_error(self.folder, exc) from None
        except BaseException:
            self.abort()
            raise
        return self

    def decide(self, key: str, job: dict) -> bool:
        """The rerun rule: True when the complete set of the same job is there (skip: nothing to write).

        Another job's complete set raises one line naming what differs, unless ``overwrite``. A set of the same
        job whose files changed since (sizes or checksums) is written again.
        """
        prev = self.previous
        if prev is None or self.overwrite:
            return False
        if prev.get("job_key") == key:
            if verify(prev, self.folder, checksums=True) is None:
                self.skipped, self._done = True, True
                self.files = [self.folder / f["name"] for f in prev["files"]]
                self._remove_staging()
                return True
            return False
        what = describe_difference(prev.get("job") or {}, job)
        raise PtrackError(f"{self.folder} holds the complete outputs of another job ({what}): pass --overwrite "
                          "(overwrite=True) to replace them, or choose another output folder")

    @contextlib.contextmanager
    def path(self, name: str) -> Iterator[Path]:
        """Step 2: a path in the staging folder to write ``name`` to (moved into place by :meth:`commit`)."""
        if not _NAME.match(name) or name == self.manifest or name in self._staged:
            raise ValueError(f"bad or repeated output name {name!r}")
        target = self.staging / name
        try:
            yield target
            write_point(f"write:{name}", target)
        except OSError as exc:
            raise write_error(self.folder / name, exc) from None
        except MemoryError:
            raise PtrackError(f"out of memory while writing {self.folder / name} (track fewer points or frames)") from None
        self._staged.append(name)

    def commit(self, key: str, job: dict, info: dict | None = None) -> list[Path]:
        """Step 3: make the staged files the set (see the module docstring); returns their final paths."""
        try:
            entries = []
            for n in self._staged:
                p = self.staging / n
                fsync_path(p)
                entries.append({"name": n, "size": p.stat().st_size, "sha256": file_sha256(p)})
            prev_names = {f["name"] for f in (self.previous or {}).get("files", [])}
            self._owned = set(self._staged) | prev_names | self._stale_owned
            self._write_journal(self._owned)
            write_point("commit:journal", self.staging / _JOURNAL)
            self._committing = True  # from here on the folder holds no complete set until the manifest lands
            self.manifest_path.unlink(missing_ok=True)
            fsync_dir(self.folder)
            write_point("commit:unlink-manifest", self.manifest_path)
            for n in self._staged:
                os.replace(self.staging / n, self.folder / n)
                write_point(f"commit:move:{n}", self.folder / n)
            for n in sorted(self._owned - set(self._staged)):
                (self.folder / n).unlink(missing_ok=True)
                write_point(f"commit:remove:{n}", self.folder / n)
            manifest = {
                "format": FORMAT, "ptrack_version": __version__, "job_key": key, "job": job,
                "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(info or {}), "files": entries,
            }
            with atomic_path(self.manifest_path, durable=True) as tmp:
                tmp.write_text(json.dumps(manifest, indent=1, default=str), encoding="utf-8")
                write_point("commit:manifest", tmp)
            self._committing, self._done = False, True
            self.files = [self.folder / n for n in self._staged]
            self._remove_staging()
            write_point("commit:cleanup", self.folder)
        except OSError as exc:
            raise write_error(self.folder, exc) from None
        return self.files

    def abort(self) -> None:
        """Undo what this run did (see the module docstring); safe to call twice."""
        if self._committing or (self.previous is None and self._stale_owned):
            # The folder holds no complete set: remove every name the set owned, so what remains is unambiguous.
            for n in sorted(self._owned | self._stale_owned):
                with contextlib.suppress(OSError):
                    (self.folder / n).unlink(missing_ok=True)
            self._committing = False
        self._remove_staging()
        self._release()
        remove_if_empty(self._created)
        self._created = []

    # -- helpers -------------------------------------------------------------------------------
    def _lock(self) -> None:
        if fcntl is None:
            return
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise PtrackError(f"another ptrack run is writing to {self.folder} (wait for it, or choose another "
                                  "output folder)") from None
            return  # a filesystem without locks (some network shares): proceed unlocked
        self._lock_fd = fd

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def _write_journal(self, owned: Iterable[str]) -> None:
        with atomic_path(self.staging / _JOURNAL, durable=True) as tmp:
            tmp.write_text(json.dumps({"manifest": self.manifest, "owned": sorted(owned)}), encoding="utf-8")

    def _read_journal(self, staging: Path) -> list[str]:
        try:
            data = json.loads((staging / _JOURNAL).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []  # no journal: the run stopped before its commit, its staging folder is all it left
        owned = data.get("owned") if isinstance(data, dict) else None
        return [n for n in _check_names(owned, staging / _JOURNAL) if n != self.manifest]

    def _remove_staging(self) -> None:
        if self.staging is None:
            return
        with contextlib.suppress(OSError):
            for p in self.staging.iterdir():  # the journal last: it marks the folder incomplete until then
                if p.name != _JOURNAL:
                    p.unlink() if p.is_file() else shutil.rmtree(p, ignore_errors=True)
            (self.staging / _JOURNAL).unlink(missing_ok=True)
            self.staging.rmdir()
        self.staging = None
