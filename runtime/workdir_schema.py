"""What a work dir's records may hold: job.json and state.json exactly as this version writes them, and every
array a data file holds exactly as the job implies it.

Each check returns what is wrong (a phrase for the "damaged work dir" line) or raises ``Damaged``, never a
TypeError or KeyError halfway through a resume: file names only of the forms this runtime writes (plain
names inside the folder, no path), integers that are integers and in range, records with all their fields,
batches in the order they were written whose frames are exactly the ones their windows finished, arrays of
the job's shapes and dtypes, stored (not compressed) and finite.
"""
from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass

import numpy as np

from m3ddm.facts import GLOBAL_FRAMES
from runtime.engines.contract import CONTEXT_DIM, LATENT_CHANNELS, global_tokens_per_frame
from runtime.settings import MAX_BATCH_WINDOWS

FORMAT = 1
JOB, STATE = "job.json", "state.json"
PREPARED_FILE = "prepared-latents.npz"
BATCH_FILE = re.compile(r"batch-(\d{6,9})\.npz\Z")


def _batch_number(name: str) -> int:
    """The number in the name of a batch file (one BATCH_FILE matches: the records are checked first)."""
    match = BATCH_FILE.match(name)
    assert match is not None, name
    return int(match.group(1))
PARTIAL_FILE = re.compile(r"\.(.+)\.\d+\.partial\Z")  # m3ddm.files.partial_name
SHA256 = re.compile(r"[0-9a-f]{64}\Z")
# What decides the final latents (every other Settings field only changes the compositing or the encoding).
LATENT_FIELDS = ("ratios", "pad", "steps", "sampler", "seed", "noise", "window_noise", "guidance", "strides",
                 "batch_windows")
JOB_KEYS = {"format", "input", "stream", "frames", "settings", "engines"}
STATE_KEYS = {"format", "prepared", "batches", "windows_done"}
RECORD_KEYS = {"file", "bytes", "sha256"}
MOST = 2 ** 31 - 1  # frames, windows, streams: far above any video, far below what breaks an int64
MAX_JOB_BYTES = 1 << 20
ZIP_SLACK = 1 << 16  # an npz's headers beyond its arrays' bytes


class Damaged(Exception):
    """What is wrong with a data file (the caller names the file and the work dir)."""


def batch_file(windows_done: int) -> str:
    return f"batch-{windows_done:06d}.npz"


def integer(value, lo: int = 0, hi: int = MOST) -> bool:
    return type(value) is int and lo <= value <= hi  # not a bool, a float, a string or 1e400


def state_limit(job: dict) -> int:
    """The most bytes state.json of ``job`` can take: a record (~120 bytes) per frame at most."""
    return 4096 + 256 * job["frames"]


@dataclass(frozen=True)
class Expected:
    """What the arrays of this run's job must be: its frames, the latent side, the global context's tokens and
    the frames of every window in plan order (the order batches are sampled and recorded in)."""
    frames: int
    latent: int
    tokens: int
    windows: tuple

    @classmethod
    def of(cls, plan, frames: int, latent: int) -> Expected:
        return cls(frames, latent, GLOBAL_FRAMES * global_tokens_per_frame(latent),
                   tuple(w.frames for level in plan for w in level))

    def prepared_specs(self) -> dict:
        frame = (LATENT_CHANNELS, self.latent, self.latent)
        return {"inits": ("<f4", (None, *frame)), "canvases": ("<f4", (None, *frame)),
                "context": ("<f4", (1, self.tokens, CONTEXT_DIM))}

    def batch_specs(self, n: int) -> dict:
        return {"frames": ("<i8", (n,)), "latents": ("<f4", (n, LATENT_CHANNELS, self.latent, self.latent))}

    def most_bytes(self, specs: dict) -> int:
        """An npz of ``specs``, a free length taken as twice the frames (a video counted another way)."""
        most = 0
        for dtype, shape in specs.values():
            n = np.dtype(dtype).itemsize
            for d in shape:
                n *= 2 * self.frames + 64 if d is None else d
            most += n
        return most + ZIP_SLACK


def job_problem(job) -> str | None:
    """What keeps ``job`` (job.json's content) from being a job record of this version, or None."""
    if not isinstance(job, dict):
        return "job.json is not a job record"
    if "format" in job and not integer(job["format"], FORMAT, FORMAT):
        return (f"job.json is of format {str(job['format'])[:20]} (another version of the runtime; this one reads "
                f"{FORMAT})")
    inp, settings = job.get("input"), job.get("settings")
    if (set(job) != JOB_KEYS or not isinstance(inp, dict) or set(inp) != {"bytes", "sha256"}
            or not integer(inp["bytes"], 0, 2 ** 62) or not isinstance(inp["sha256"], str)
            or not SHA256.match(inp["sha256"]) or not integer(job["stream"]) or not integer(job["frames"], 1)
            or not isinstance(settings, dict) or set(settings) != set(LATENT_FIELDS)
            or not integer(settings["batch_windows"], 1, MAX_BATCH_WINDOWS) or not isinstance(job["engines"], dict)):
        return "job.json is not a job record of this version"
    return None


def _record_problem(record, name_ok) -> str | None:
    if (not isinstance(record, dict) or set(record) != RECORD_KEYS or not isinstance(record["file"], str)
            or not integer(record["bytes"], 0, 2 ** 62) or not isinstance(record["sha256"], str)
            or not SHA256.match(record["sha256"])):
        return "a record is not a file's name, size and checksum"
    if not name_ok(record["file"]):
        return f"{record['file'][:80]!r} is not a file name this runtime writes there"
    return None


def state_problem(state) -> str | None:
    """What keeps ``state`` (state.json's content) from being a state this version writes, or None."""
    if not isinstance(state, dict) or set(state) != STATE_KEYS:
        return "state.json is not a state record of this version"
    if not integer(state["format"], FORMAT, FORMAT):
        return f"state.json is of format {str(state['format'])[:20]} (this version reads {FORMAT})"
    done, batches, prepared = state["windows_done"], state["batches"], state["prepared"]
    if not integer(done):
        return f"state.json's windows_done is {str(done)[:20]}, not a count of windows"
    if prepared is not None:
        problem = _record_problem(prepared, lambda name: name == PREPARED_FILE)
        if problem:
            return f"state.json's prepared latents: {problem}"
    if not isinstance(batches, list) or len(batches) > done:
        return "state.json's batches are not a list of at most windows_done records"
    last = 0
    for record in batches:
        problem = _record_problem(record, lambda name: BATCH_FILE.match(name) is not None)
        if problem:
            return f"state.json's batches: {problem}"
        number = _batch_number(record["file"])
        if record["file"] != batch_file(number) or not last < number <= done:
            return f"state.json's batch {record['file']} is out of order or beyond windows_done"
        last = number
    return None


def record_names(state) -> set:
    """The data files ``state`` names (records that fit our names, whatever else is wrong with it)."""
    names = set()
    if isinstance(state, dict):
        batches = state.get("batches")
        records = [state.get("prepared"), *(batches if isinstance(batches, list) else ())]
        for record in records:
            name = record.get("file") if isinstance(record, dict) else None
            if isinstance(name, str) and (name == PREPARED_FILE or (BATCH_FILE.match(name) and
                                                                     name == batch_file(int(name[6:-4])))):
                names.add(name)
    return names


def batch_frames(expected: Expected, state: dict) -> list:
    """The frames each batch record of ``state`` must hold: those its windows finished first (the windows
    after the previous record's, in plan order). Raises Damaged where the records cannot be this job's."""
    windows, done = expected.windows, state["windows_done"]
    if done > len(windows):
        raise Damaged(f"windows_done is {done}; this job has {len(windows)} windows")
    stored: set[int] = set()
    last, out = 0, []
    for record in state["batches"]:
        number = _batch_number(record["file"])
        new = sorted({f for w in windows[last:number] for f in w} - stored)
        if not new:
            raise Damaged(f"{record['file']} is recorded, but its windows finish no frame")
        out.append(np.array(new, np.int64))
        stored.update(new)
        last = number
    if any(f not in stored for w in windows[:done] for f in w):
        raise Damaged(f"the batches recorded do not hold every frame of the {done} windows done")
    return out


def read_arrays(f, specs: dict) -> dict:
    """The arrays of an npz as np.savez writes them: exactly the names of ``specs`` ({name: (dtype, shape)},
    None in a shape for any length), each stored, of its dtype and shape, finite. Raises Damaged."""
    try:
        with zipfile.ZipFile(f) as z:
            infos = z.infolist()
            if sorted(i.filename for i in infos) != sorted(f"{k}.npy" for k in specs):
                raise Damaged(f"it holds {sorted(i.filename[:40] for i in infos)[:8]}, not the arrays "
                              f"{sorted(specs)}")
            out = {}
            for info in infos:
                name = info.filename[:-4]
                dtype, shape = specs[name]
                if info.compress_type != zipfile.ZIP_STORED:
                    raise Damaged(f"its {name} is compressed")
                with z.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                                   (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                    if read_header is None:
                        raise Damaged(f"its {name} is of .npy version {version}")
                    got_shape, fortran, got_dtype = read_header(member)
                if (got_dtype != np.dtype(dtype) or fortran or len(got_shape) != len(shape)
                        or any(want is not None and got != want for got, want in zip(got_shape, shape))):
                    raise Damaged(f"its {name} is {got_dtype} {list(got_shape)[:6]}, not {np.dtype(dtype)} "
                                  f"{['T' if d is None else d for d in shape]}")
                with z.open(info) as member:
                    array = np.lib.format.read_array(member, allow_pickle=False)
                if array.dtype.kind == "f" and not all(np.isfinite(part).all() for part in _parts(array)):
                    raise Damaged(f"its {name} holds values that are not finite (NaN or infinite)")
                out[name] = array
            return out
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError, RuntimeError) as exc:
        raise Damaged(f"it is not an array file this runtime wrote ({type(exc).__name__})") from None


def _parts(array: np.ndarray, rows: int = 256):
    """``array`` a few rows at a time: a finiteness check never doubles a long video's memory."""
    for i in range(0, max(len(array), 1), rows):
        yield array[i:i + rows]
