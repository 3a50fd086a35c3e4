"""Writing videos with PyAV (FFmpeg): RGB frames at the caller's timestamps, audio remuxed, all or nothing.

Encodes H.264 yuv420p by default at the source timestamps, remuxes the first audio stream unchanged when the
container takes its codec (else re-encodes it to AAC, or Opus for webm), and writes to a temporary file
renamed into place at the end: a failed run never leaves a partial output, and never touches the input.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from m3ddm.errors import first_line
from m3ddm.files import track_partial
from runtime.video.source import VideoError, _av, open_media

# The encoder's threads, fixed: the bitstream depends on them (see _add_video_stream), so a count that followed
# the machine would give other bytes on every machine and in every CPU set a job may run in.
ENCODER_THREADS = 4
MAX_ENCODER_THREADS = 64


@dataclass
class EncodeOptions:
    codec: str = "libx264"
    crf: int | None = 18
    pix_fmt: str = "yuv420p"
    preset: str = "medium"
    audio: bool = True
    threads: int = ENCODER_THREADS

    def check(self, path) -> None:
        """Refuse, before any work, settings the encoder or the container would refuse at the first frame:
        encodes two small frames in memory with exactly these settings."""
        path = Path(path)
        check_output_path(path)
        if self.crf is not None and not (isinstance(self.crf, int) and 0 <= self.crf <= 51):
            raise VideoError(f"crf must be an integer from 0 (lossless) to 51, not {self.crf}")
        if not (isinstance(self.threads, int) and not isinstance(self.threads, bool)
                and 1 <= self.threads <= MAX_ENCODER_THREADS):
            raise VideoError(f"encoder threads must be an integer from 1 to {MAX_ENCODER_THREADS}, not {self.threads}")
        av = _av()
        try:
            container = av.open(io.BytesIO(), "w", format=_FORMATS[path.suffix.lower()])
        except Exception as exc:
            raise VideoError(f"cannot write {path.suffix} files here: {first_line(exc)}") from None
        try:
            stream = _add_video_stream(av, container, self, 30, 64, 64)
            for i in range(2):
                frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 128, np.uint8), format="rgb24")
                frame.pts, frame.time_base = i * 3000, TIME_BASE
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        except VideoError:
            raise
        except Exception as exc:
            raise VideoError(f"cannot encode {path.name} with codec {self.codec!r}, pixel format {self.pix_fmt!r}"
                             f"{f', preset {self.preset!r}' if _takes_crf(self.codec) else ''}: "
                             f"{first_line(exc)}") from None
        finally:
            try:
                container.close()
            except Exception:
                pass


X264 = ("libx264", "libx264rgb")
X264_PARAMS = "mbtree=0"  # see _add_video_stream


def _takes_crf(codec: str) -> bool:
    return codec in ("libx264", "libx264rgb", "libx265")


def _add_video_stream(av, container, options: EncodeOptions, fps: float, width: int, height: int, gaps: bool = False):
    try:
        codec = av.Codec(options.codec, "w")
    except Exception:
        raise VideoError(f"unknown video encoder {options.codec!r} "
                         "(e.g. libx264, libx265, libvpx-vp9, mpeg4)") from None
    if codec.type != "video":
        raise VideoError(f"{options.codec!r} is not a video encoder")
    formats = {f.name for f in (codec.video_formats or ())}
    if formats and options.pix_fmt not in formats:
        raise VideoError(f"{options.codec} cannot encode pixel format {options.pix_fmt!r} "
                         f"(it takes {', '.join(sorted(formats))})")
    rate = Fraction(fps).limit_denominator(100000) if fps > 0 else 30
    vs = container.add_stream(options.codec, rate=rate)
    vs.width, vs.height, vs.pix_fmt = width, height, options.pix_fmt
    vs.time_base = TIME_BASE
    vs.codec_context.time_base = TIME_BASE
    # Same job, same bytes: left alone, PyAV opens libx264 with slice threads, one per CPU this process may run
    # on (sched_getaffinity), and each thread encodes its own slice of every frame, so the bitstream follows the
    # machine: 2 CPUs gave other bytes than `taskset -c 0`, a GPU host's 16 cores would give 16 slices. A fixed
    # count of frame threads is x264's deterministic mode (no --non-deterministic): the same bytes wherever the
    # job runs, slices' bitrate cost avoided, and faster than slices here (benchmarks/encode.py).
    vs.codec_context.thread_type = "FRAME"
    vs.codec_context.thread_count = options.threads
    opts = {}
    if options.crf is not None and _takes_crf(options.codec):
        opts = {"crf": str(options.crf), "preset": options.preset}
    if options.codec in X264:
        # Same job, same bytes (2): x264's macroblock tree reads uninitialised stack memory (valgrind memcheck:
        # propagate_cost at the bottom-right partial lowres macroblock, fed from refine_subpel's stack; the
        # asm build only), so with it on, the bytes follow whatever the process's other threads left in memory:
        # the same CLI job run 4 times gave 4 files, even on one encoder thread, and one file with it off. Its
        # cost at crf 18 (make bench-encode, benchmarks/RESULTS.md): +29 % bytes and -1.0 dB PSNR at 1920x3412,
        # +45 % and +0.4 dB at 1280x1280, the same time per frame on 2 cores.
        opts["x264-params"] = X264_PARAMS
    if gaps and options.codec in X264:
        # Without B-frames no frame is stored ahead of an earlier one, so no timestamp is shifted back by
        # the (here: hours-long) reorder delay: every frame decodes at its own time, starting at zero.
        opts["bf"] = "0"
    vs.options = opts
    return vs


TIME_BASE = Fraction(1, 90000)  # fine enough for any real timestamp; the muxer rescales to its own
MAX_REGULAR_GAP_S = 1.0  # frames further apart are encoded without B-frames (see _add_video_stream)


class VideoWriter:
    """Streams RGB frames into a video file that appears at ``path`` only when ``commit`` succeeds.

    Frames are written to a temporary file beside ``path``; ``abort`` (or any failure) removes it and
    leaves ``path`` as it was. Odd sizes are cropped to even ones for 4:2:0 chroma. Timestamps are the
    caller's (seconds), so variable frame rate survives; the first audio stream of ``audio_from`` is
    remuxed unchanged when the container takes its codec, else re-encoded.
    """

    def __init__(self, path, fps: float, options: EncodeOptions | None = None, audio_from=None, times=None):
        self.av = _av()
        self.options = options or EncodeOptions()
        self.path = Path(path)
        self.fps = fps
        # The output's clock starts at zero (a stream starting at 1 h plays from 0, its audio shifted alike);
        # ``times`` (every frame's, when known up front) also tells whether the frames are hours apart.
        times = np.asarray(times if times is not None else [0.0], np.float64)
        self.start = float(times[0]) if len(times) else 0.0
        self.gaps = bool(len(times) > 1 and np.diff(times).max() > MAX_REGULAR_GAP_S)
        self.audio_from = audio_from if self.options.audio else None
        check_output_path(self.path)
        self.format = _FORMATS[self.path.suffix.lower()]
        self.tmp = self.path.with_name(f".{self.path.stem}.partial-{os.getpid()}{self.path.suffix}")
        # PyAV's output container and video stream, made by the first write (PyAV is imported lazily: self.av).
        self.container: Any = None
        self.stream: Any = None
        self.audio = (None, None, None)
        self.last_pts, self.count = -1, 0

    def _open(self, width: int, height: int):
        even_w, even_h = width - width % 2, height - height % 2
        if even_w < 2 or even_h < 2:
            raise VideoError(f"output frames of {width}x{height} are too small to encode")
        track_partial(self.tmp)
        # A path, never a URL: an output named concat:out.mp4 or pipe:1.mp4 is that file (as inputs are).
        self.container = self.av.open("file:" + os.path.abspath(self.tmp), "w", format=self.format)
        vs = _add_video_stream(self.av, self.container, self.options, self.fps, even_w, even_h, self.gaps)
        self.stream = vs
        if self.audio_from is not None:
            self.audio = _add_audio(self.av, self.container, self.audio_from, self.format)

    def write(self, rgb: np.ndarray, time_s: float) -> None:
        try:
            if self.stream is None:
                self._open(rgb.shape[1], rgb.shape[0])
            vs = self.stream
            # Converted here on one thread: left to the encoder, or to reformat's default (threads=0: one per
            # CPU), swscale converts in slices on as many threads as the machine has, and its threaded
            # conversion gave other bits in a process that had cancelled a run before.
            frame = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[:vs.height, :vs.width]),
                                                    format="rgb24").reformat(format=vs.pix_fmt, threads=1)
            pts = max(int(round((float(time_s) - self.start) / TIME_BASE)), self.last_pts + 1, 0)  # increasing
            frame.pts, frame.time_base = pts, TIME_BASE
            self.last_pts = pts
            for packet in vs.encode(frame):
                self.container.mux(packet)
            self.count += 1
        except VideoError:
            self.abort()
            raise
        except Exception as exc:
            self.abort()
            raise VideoError(f"cannot write {self.path}: {first_line(exc)}") from None

    def commit(self) -> Path:
        try:
            if self.stream is None:
                raise VideoError("no frames to write")
            for packet in self.stream.encode():
                self.container.mux(packet)
            src, a_in, out = self.audio
            if a_in is not None:
                _mux_audio(src, a_in, out, self.container, self.start)
            self.container.close()
            self.container = None
            os.replace(self.tmp, self.path)
            return self.path
        except VideoError:
            raise
        except Exception as exc:
            raise VideoError(f"cannot write {self.path}: {first_line(exc)}") from None
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop everything written so far (no-op after a successful commit)."""
        for c in (self.container, self.audio[0]):
            if c is not None:
                try:
                    c.close()
                except Exception:
                    pass
        self.container, self.audio = None, (None, None, None)
        self.tmp.unlink(missing_ok=True)
        track_partial(self.tmp, False)


_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}


def check_output_path(path: Path) -> None:
    """Refuse, before any work, an output that cannot be written."""
    if path.suffix.lower() not in _FORMATS:
        raise VideoError(f"output {path.name}: unsupported container {path.suffix or '(none)'}; "
                         f"use .mp4, .mov, .mkv or .webm")
    if not path.parent.is_dir():
        raise VideoError(f"output folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise VideoError(f"output folder {path.parent} is not writable")
    if path.is_dir():
        raise VideoError(f"output {path} is a folder")


def write_video(path, frames, times: np.ndarray, fps: float, options: EncodeOptions | None = None,
                audio_from=None) -> Path:
    """Encode an iterable of RGB uint8 frames at ``times`` (seconds) to ``path``, all or nothing."""
    writer = VideoWriter(path, fps, options, audio_from, times=times)
    try:
        for rgb, t in zip(frames, times):
            writer.write(rgb, t)
        return writer.commit()
    finally:
        writer.abort()


# Audio codecs each container takes as they are; anything else is re-encoded to AAC (Opus for webm).
_REMUX = {"mp4": {"aac", "mp3", "ac3", "eac3", "alac", "opus", "flac"},
          "mov": {"aac", "mp3", "ac3", "alac", "pcm_s16le"},
          "matroska": None, "webm": {"opus", "vorbis"}}


def _add_audio(av, container, source, fmt):
    try:
        src = open_media(source)  # the video's own opener: the same file, the same refusals
    except VideoError:
        return None, None, None
    if not src.streams.audio:
        src.close()
        return None, None, None
    a_in = src.streams.audio[0]
    allowed = _REMUX[fmt]
    name = a_in.codec_context.name
    canonical = {"mp3float": "mp3", "aac_latm": "aac"}.get(name, name)
    if allowed is None or canonical in allowed:
        a_out = container.add_stream_from_template(a_in)
        return src, a_in, (a_out, False)
    codec = "libopus" if fmt == "webm" else "aac"
    a_out = container.add_stream(codec, rate=a_in.codec_context.sample_rate or 48000)
    return src, a_in, (a_out, True)


def _mux_audio(src, a_in, out, container, start: float = 0.0):
    """The audio, shifted by ``start`` seconds as the video is; what lies before the first frame is dropped."""
    a_out, reencode = out
    if not reencode:
        shift = int(round(start / a_in.time_base)) if start and a_in.time_base else 0
        for packet in src.demux(a_in):
            if packet.dts is None:
                continue
            if shift:
                if packet.pts is not None and packet.pts - shift < 0:
                    continue
                packet.pts = None if packet.pts is None else packet.pts - shift
                packet.dts -= shift
            packet.stream = a_out
            container.mux(packet)
        return
    for frame in src.decode(a_in):
        if start and frame.time is not None and frame.time < start:
            continue
        frame.pts = None
        for packet in a_out.encode(frame):
            container.mux(packet)
    for packet in a_out.encode():
        container.mux(packet)
