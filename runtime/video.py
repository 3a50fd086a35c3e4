"""Video in and out with PyAV (FFmpeg): RGB frames with their timestamps, rotation applied, audio kept.

Reading decodes the first video stream (or the one asked for) to RGB24, whatever its bit depth, and
returns per-frame times so that variable frame rate survives. Writing encodes H.264 yuv420p by default
at the source timestamps, remuxes the first audio stream unchanged when the container takes its codec
(else re-encodes it to AAC), and writes to a temporary file renamed into place at the end: a failed
run never leaves a partial output, and never touches the input.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np


class VideoError(ValueError):
    """The video cannot be read or written; the message is one line for the user."""


def _av():
    try:
        import av
    except ImportError:
        raise VideoError("PyAV is not installed: pip install av") from None
    return av


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass
class VideoInfo:
    path: str
    width: int  # as displayed (rotation applied)
    height: int
    fps: float  # average frame rate
    frames: int = 0  # decoded frames (0 until read)
    duration: float = 0.0
    rotation: int = 0  # counter-clockwise degrees applied to the decoded frames
    pix_fmt: str = ""
    codec: str = ""
    has_audio: bool = False
    stream_index: int = 0
    times: np.ndarray = field(default_factory=lambda: np.zeros(0))


def _open_input(path):
    av = _av()
    path = Path(path)
    if not path.exists():
        raise VideoError(f"input {path} does not exist")
    if path.is_dir():
        raise VideoError(f"input {path} is a folder, not a video file")
    if path.stat().st_size == 0:
        raise VideoError(f"input {path} is empty (0 bytes)")
    try:
        return av.open(str(path), metadata_errors="ignore")
    except Exception as exc:
        raise VideoError(f"cannot open {path} as a video: {_first_line(exc)}") from None


def _video_stream(container, path, index):
    streams = container.streams.video
    if not streams:
        raise VideoError(f"{path} has no video stream" + (" (audio only)" if container.streams.audio else ""))
    if index is None:
        return streams[0]
    if not 0 <= index < len(streams):
        raise VideoError(f"{path} has {len(streams)} video stream(s); there is no video stream {index}")
    return streams[index]


def _display(frame) -> np.ndarray:
    rgb = frame.to_ndarray(format="rgb24")
    k = int(round((getattr(frame, "rotation", 0) or 0) / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb


def iter_frames(path, stream: int | None = None) -> Iterator[tuple[np.ndarray, float, int]]:
    """(RGB uint8 [H, W, 3] as displayed, time in seconds, rotation) per decoded frame."""
    container = _open_input(path)
    try:
        vs = _video_stream(container, path, stream)
        vs.thread_type = "AUTO"
        last_t = None
        try:
            for frame in container.decode(vs):
                t = frame.time
                if t is None:  # no pts: count on from the last one at the average rate
                    rate = float(vs.average_rate or vs.guessed_rate or 30)
                    t = 0.0 if last_t is None else last_t + 1.0 / rate
                last_t = t
                yield _display(frame), float(t), int(getattr(frame, "rotation", 0) or 0)
        except VideoError:
            raise
        except Exception as exc:  # corrupt data after some frames: keep what decoded, if anything
            if last_t is None:
                raise VideoError(f"cannot decode {path}: {_first_line(exc)}") from None
    finally:
        container.close()


def probe(path, stream: int | None = None) -> VideoInfo:
    container = _open_input(path)
    try:
        vs = _video_stream(container, path, stream)
        rate = vs.average_rate or vs.guessed_rate
        cc = vs.codec_context
        return VideoInfo(str(path), cc.width, cc.height, float(rate) if rate else 0.0, pix_fmt=cc.pix_fmt or "",
                         codec=cc.name, has_audio=bool(container.streams.audio), stream_index=vs.index)
    finally:
        container.close()


def read_video(path, stream: int | None = None, max_frames: int | None = None) -> tuple[np.ndarray, VideoInfo]:
    """All frames (RGB uint8 [T, H, W, 3], as displayed) and the video's info, times included."""
    info = probe(path, stream)
    frames, times, rotation = [], [], 0
    for rgb, t, rot in iter_frames(path, stream):
        if frames and rgb.shape != frames[0].shape:
            raise VideoError(f"{path}: frame size changes mid-stream ({frames[0].shape[1]}x{frames[0].shape[0]} "
                             f"to {rgb.shape[1]}x{rgb.shape[0]}), which is not supported")
        frames.append(rgb)
        times.append(t)
        rotation = rot
        if max_frames and len(frames) >= max_frames:
            break
    if not frames:
        raise VideoError(f"{path} has no decodable video frames")
    info.frames = len(frames)
    info.height, info.width = frames[0].shape[:2]
    info.rotation = rotation
    info.times = np.asarray(times, dtype=np.float64)
    info.fps = info.fps or _fps_from_times(info.times)
    info.duration = float(info.times[-1] - info.times[0] + 1.0 / max(info.fps, 1e-6)) if len(times) else 0.0
    return np.stack(frames), info


def _fps_from_times(times: np.ndarray) -> float:
    if len(times) < 2:
        return 30.0
    span = times[-1] - times[0]
    return float((len(times) - 1) / span) if span > 0 else 30.0


@dataclass
class EncodeOptions:
    codec: str = "libx264"
    crf: int | None = 18
    pix_fmt: str = "yuv420p"
    preset: str = "medium"
    audio: bool = True


def _time_base(times: np.ndarray, fps: float) -> Fraction:
    # Fine enough for any real timestamp; the muxer rescales to its own time base.
    return Fraction(1, 90000)


def write_video(path, frames, times: np.ndarray, fps: float, options: EncodeOptions | None = None,
                audio_from=None) -> Path:
    """Encode ``frames`` (an iterable of RGB uint8 [H, W, 3], all one size) at ``times`` (seconds) to ``path``.

    Odd sizes are cropped to even ones for 4:2:0 chroma. Written to a temporary file beside ``path`` and
    renamed at the end; on any failure the temporary file is removed and ``path`` is left as it was.
    """
    av = _av()
    options = options or EncodeOptions()
    path = Path(path)
    if not path.parent.is_dir():
        raise VideoError(f"output folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise VideoError(f"output folder {path.parent} is not writable")
    fmt = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}.get(path.suffix.lower())
    if fmt is None:
        raise VideoError(f"output {path.name}: unsupported container {path.suffix or '(none)'}; use .mp4, .mov, .mkv or .webm")
    tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    tb = _time_base(times, fps)
    container = None
    try:
        container = av.open(str(tmp), "w", format=fmt)
        vs = None
        audio_in = audio_out = None
        in_container = None
        count = 0
        last_pts = -1
        for rgb, t in zip(frames, times):
            h, w = rgb.shape[:2]
            if vs is None:
                even_w, even_h = w - w % 2, h - h % 2
                if even_w < 2 or even_h < 2:
                    raise VideoError(f"output frames of {w}x{h} are too small to encode")
                vs = container.add_stream(options.codec, rate=Fraction(fps).limit_denominator(100000) if fps > 0 else 30)
                vs.width, vs.height, vs.pix_fmt = even_w, even_h, options.pix_fmt
                vs.time_base = tb
                vs.codec_context.time_base = tb
                opts = {}
                if options.crf is not None and options.codec in ("libx264", "libx265"):
                    opts["crf"] = str(options.crf)
                    opts["preset"] = options.preset
                vs.options = opts
                if audio_from is not None and options.audio:
                    in_container, audio_in, audio_out = _add_audio(av, container, audio_from, fmt)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[:vs.height, :vs.width]), format="rgb24")
            pts = max(int(round(float(t) / tb)), last_pts + 1)  # strictly increasing, as muxers demand
            frame.pts, frame.time_base = pts, tb
            last_pts = pts
            for packet in vs.encode(frame):
                container.mux(packet)
            count += 1
        if vs is None:
            raise VideoError("no frames to write")
        for packet in vs.encode():
            container.mux(packet)
        if audio_in is not None:
            _mux_audio(in_container, audio_in, audio_out, container, end_time=float(times[count - 1]) + 1.0 / max(fps, 1))
        container.close()
        container = None
        if in_container is not None:
            in_container.close()
        os.replace(tmp, path)
    except VideoError:
        raise
    except Exception as exc:
        raise VideoError(f"cannot write {path}: {_first_line(exc)}") from None
    finally:
        if container is not None:
            try:
                container.close()
            except Exception:
                pass
        tmp.unlink(missing_ok=True)
    return path


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


def _mux_audio(src, a_in, out, container, end_time: float):
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
