"""Writing videos with PyAV (FFmpeg): RGB frames at the caller's timestamps, audio remuxed, all or nothing.

Encodes H.264 yuv420p by default at the source timestamps, remuxes the first audio stream unchanged when the
container takes its codec (else re-encodes it to AAC, or Opus for webm), and writes to a temporary file
renamed into place at the end: a failed run never leaves a partial output, and never touches the input.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from m3ddm.errors import first_line
from runtime.video.source import VideoError, _av


@dataclass
class EncodeOptions:
    codec: str = "libx264"
    crf: int | None = 18
    pix_fmt: str = "yuv420p"
    preset: str = "medium"
    audio: bool = True


TIME_BASE = Fraction(1, 90000)  # fine enough for any real timestamp; the muxer rescales to its own


class VideoWriter:
    """Streams RGB frames into a video file that appears at ``path`` only when ``commit`` succeeds.

    Frames are written to a temporary file beside ``path``; ``abort`` (or any failure) removes it and
    leaves ``path`` as it was. Odd sizes are cropped to even ones for 4:2:0 chroma. Timestamps are the
    caller's (seconds), so variable frame rate survives; the first audio stream of ``audio_from`` is
    remuxed unchanged when the container takes its codec, else re-encoded.
    """

    def __init__(self, path, fps: float, options: EncodeOptions | None = None, audio_from=None):
        self.av = _av()
        self.options = options or EncodeOptions()
        self.path = Path(path)
        self.fps = fps
        self.audio_from = audio_from if self.options.audio else None
        check_output_path(self.path)
        self.format = _FORMATS[self.path.suffix.lower()]
        self.tmp = self.path.with_name(f".{self.path.stem}.partial-{os.getpid()}{self.path.suffix}")
        self.container = None
        self.stream = None
        self.audio = (None, None, None)
        self.last_pts, self.count = -1, 0

    def _open(self, width: int, height: int):
        even_w, even_h = width - width % 2, height - height % 2
        if even_w < 2 or even_h < 2:
            raise VideoError(f"output frames of {width}x{height} are too small to encode")
        self.container = self.av.open(str(self.tmp), "w", format=self.format)
        rate = Fraction(self.fps).limit_denominator(100000) if self.fps > 0 else 30
        vs = self.container.add_stream(self.options.codec, rate=rate)
        vs.width, vs.height, vs.pix_fmt = even_w, even_h, self.options.pix_fmt
        vs.time_base = TIME_BASE
        vs.codec_context.time_base = TIME_BASE
        if self.options.crf is not None and self.options.codec in ("libx264", "libx264rgb", "libx265"):
            vs.options = {"crf": str(self.options.crf), "preset": self.options.preset}
        self.stream = vs
        if self.audio_from is not None:
            self.audio = _add_audio(self.av, self.container, self.audio_from, self.format)

    def write(self, rgb: np.ndarray, time_s: float) -> None:
        try:
            if self.stream is None:
                self._open(rgb.shape[1], rgb.shape[0])
            vs = self.stream
            frame = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[:vs.height, :vs.width]), format="rgb24")
            pts = max(int(round(float(time_s) / TIME_BASE)), self.last_pts + 1)  # strictly increasing
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
                _mux_audio(src, a_in, out, self.container)
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
    writer = VideoWriter(path, fps, options, audio_from)
    try:
        for rgb, t in zip(frames, times):
            writer.write(rgb, t)
        return writer.commit()
    finally:
        writer.abort()


# Audio codecs each container takes as they are; anything else is re-encoded to AAC (Opus for webm).
_REMUX = {"mp4": {"aac", "mp3", "ac3", "eac3", "alac", "opus", "flac"}, "mov": {"aac", "mp3", "ac3", "alac", "pcm_s16le"},
          "matroska": None, "webm": {"opus", "vorbis"}}


def _add_audio(av, container, source, fmt):
    try:
        src = av.open(str(source), metadata_errors="ignore")
    except Exception:
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


def _mux_audio(src, a_in, out, container):
    a_out, reencode = out
    if not reencode:
        for packet in src.demux(a_in):
            if packet.dts is None:
                continue
            packet.stream = a_out
            container.mux(packet)
        return
    for frame in src.decode(a_in):
        frame.pts = None
        for packet in a_out.encode(frame):
            container.mux(packet)
    for packet in a_out.encode():
        container.mux(packet)
