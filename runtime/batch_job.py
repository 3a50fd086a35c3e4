"""runtime.batch's Ray Data actor (``VideoJob``): one engine set, one video per call, a report line each.
Apart from the command so that Ray finds it by module, not pickled from ``__main__``."""
from __future__ import annotations

import json
import time
from pathlib import Path

from m3ddm.errors import M3DDMError, first_line
from runtime import storage


class VideoJob:
    """A Ray Data actor: one engine set, built once, outpainting one video per call. A failure is the video's
    (its report line), never the actor's."""

    def __init__(self, engines, backend, threads, gpu_memory_gb, settings, encode, stream):
        from runtime.api import Outpainter
        self.outpainter = Outpainter(engines, backend=backend, threads=threads, gpu_memory_gb=gpu_memory_gb)
        self.outpainter.backend.load()
        self.settings, self.encode, self.stream = settings, encode, stream

    def __call__(self, row: dict) -> dict:
        t0 = time.perf_counter()
        record = {"input": row["input"], "status": "failed", "outputs": {}, "frames": None, "seconds": None,
                  "error": None, "attempts": count_attempt(Path(row["attempts"]))}
        try:
            with storage.staged_input(row["input"], Path(row["scratch"])) as source:
                Path(row["output"]).parent.mkdir(parents=True, exist_ok=True)  # a work root new on this node
                summary = self.outpainter.outpaint_file(source, row["output"], settings=self.settings,
                                                        encode=self.encode, stream=self.stream,
                                                        work_dir=row["work_dir"])
            outputs = storage.publish(summary["outputs"], row["uploads"])
            record.update(status="succeeded", outputs=outputs, frames=summary["frames"],
                          resumed_windows=summary.get("resumed_windows", 0))
        except (M3DDMError, ValueError, OSError) as exc:  # the outpaint command's one line
            record["error"] = first_line(exc)
        except Exception as exc:
            record["error"] = f"unexpected {type(exc).__name__}: {first_line(exc)}"
        record["seconds"] = round(time.perf_counter() - t0, 3)
        if record["status"] == "succeeded":
            Path(row["attempts"]).unlink(missing_ok=True)
        return {"line": json.dumps(record)}


def count_attempt(path: Path) -> int:
    """This start of a video counted in ``path``, on the batch's storage (where its work dir is): 1 the first
    time; more when Ray ran it again (its worker's node or process lost) or a stopped batch was run again.
    Each start resumes from the work dir, so a count above 1 costs the windows in flight, not the video."""
    try:
        before = int(path.read_text() or 0)
    except (OSError, ValueError):
        before = 0
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(before + 1))
    except OSError:
        pass
    return before + 1
