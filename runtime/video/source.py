"""Reading videos with PyAV (FFmpeg): RGB frames with their timestamps, rotation applied.

Decodes the first video stream (or the one asked for) to RGB24, whatever its bit depth, and returns
per-frame times so that variable frame rate survives.
"""
from __future__ import annotations

import errno
import os
import stat
from collections.abc import Collection, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, overload

import numpy as np

from m3ddm.errors import InputError, first_line


class VideoError(InputError):
    """The video cannot be read or written; the message is one line for the user."""


def _av():
    try:
        import av
    except ImportError:
        raise VideoError("PyAV is not installed: pip install av") from None
    return av


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


# The demuxers a user's file may be read with: FFmpeg's names, as its probe of the bytes reports them (never
# the file's name). Each reads its one file and nothing else. Refused, among others: hls and dash (playlists
# open their segments), concat (an ffconcat script opens its entries), lavfi (a filter graph can open files),
# the subtitle, metadata and text formats (no frames), and containers no user has asked for (nut, mxf: add
# them here when one does). Two of them could open other files, and are held to their one file below: mov
# follows external data references (dref), image2 a numbered or globbed name (img%03d.png) as a sequence.
MEDIA_DEMUXERS = (
    "mov",                    # .mp4 .mov .m4v .3gp
    "matroska",               # .mkv .webm
    "avi", "mpegts", "mpeg",  # .avi; .ts .m2ts; .mpg .vob (program stream)
    "flv", "ogg", "asf",      # .flv; .ogv; .wmv
    "ivf", "yuv4mpegpipe",    # VP8/VP9/AV1 in IVF; raw .y4m
    "h264", "hevc",           # elementary streams (.h264, .265)
    "gif", "apng", "png_pipe", "jpeg_pipe", "webp_pipe",  # a single image or animation
    "image2",                 # a single still FFmpeg knows by its suffix (a .jpg is probed as this)
)
# AVFormatContext options of every open: the path is read by FFmpeg's file protocol alone (a colon in a name
# is no protocol; a nested open of any other protocol fails), only the demuxers above may read its header,
# mov's external references stay closed whatever FFmpeg's default, and image2 reads the one file named.
_OPEN_OPTIONS = {"protocol_whitelist": "file", "format_whitelist": ",".join(MEDIA_DEMUXERS), "enable_drefs": "0",
                 "pattern_type": "none"}


def shown(path) -> str:
    """A path as one line of a message: control characters (a newline in a name) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(path))


def open_media(path):
    """A user's video (or image) file opened for reading by PyAV: the one way a file given by a user, a batch
    or an upload reaches FFmpeg. Only a regular file, only as a file (never as a URL or protocol), only with the
    demuxer of a media container (MEDIA_DEMUXERS), never opening another file. Raises VideoError (one line)."""
    av = _av()
    path = Path(path)
    try:
        st = path.stat()  # follows a symlink: what it leads to must be a regular file too
    except FileNotFoundError:
        raise VideoError(f"input {shown(path)} does not exist") from None
    except OSError as exc:
        raise VideoError(f"cannot read {shown(path)}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise VideoError(f"input {shown(path)} is a folder, not a video file")
    if not stat.S_ISREG(st.st_mode):  # a fifo would block, a device never ends
        raise VideoError(f"input {shown(path)} is not a regular file (a device, fifo or socket)")
    if st.st_size == 0:
        raise VideoError(f"input {shown(path)} is empty (0 bytes)")
    try:
        container = av.open("file:" + os.path.abspath(path), options=_OPEN_OPTIONS, metadata_errors="ignore")
    except Exception as exc:
        if getattr(exc, "errno", None) == errno.EINVAL:  # the probed format is not on the list
            raise _not_media(path) from None
        raise VideoError(f"cannot open {shown(path)} as a video: {_reason(exc)}") from None
    if not set(container.format.name.split(",")) & set(MEDIA_DEMUXERS):  # the option's own check, once more
        container.close()
        raise _not_media(path)
    return container


def _not_media(path) -> VideoError:
    return VideoError(f"{shown(path)} is not a media file this runtime reads: FFmpeg reads it as a format this "
                      "runtime does not take (playlists, scripts, uncommon containers: README, Security)")


def _reason(exc) -> str:
    """FFmpeg's reason without the URL it appends (the name is already in the message)."""
    return getattr(exc, "strerror", None) or first_line(exc)


def _video_stream(container, path, index):
    streams = container.streams.video
    if not streams:
        raise VideoError(f"{shown(path)} has no video stream" + (" (audio only)" if container.streams.audio else ""))
    if index is None:
        return streams[0]
    if not 0 <= index < len(streams):
        raise VideoError(f"{shown(path)} has {len(streams)} video stream(s); there is no video stream {index}")
    return streams[index]


def _display(frame) -> np.ndarray:
    rgb = frame.to_ndarray(format="rgb24")
    k = int(round((getattr(frame, "rotation", 0) or 0) / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb


def check_pixels(width: int, height: int, max_pixels: int | None, what: str) -> None:
    """The pixel budget, for every frame read or written: ``what`` of width x height past it is refused."""
    if max_pixels and width * height > max_pixels:
        raise VideoError(f"{what} of {width}x{height} exceed the pixel budget of {max_pixels} pixels (--max-pixels)")


@overload
def iter_frames(path, stream: int | None = None, rgb: Literal[True] = True,
                max_pixels: int | None = None) -> Generator[tuple[np.ndarray, float, int], None, None]: ...


@overload
def iter_frames(path, stream: int | None = None, rgb: bool | Collection[int] = True,
                max_pixels: int | None = None) -> Generator[tuple[np.ndarray | None, float, int], None, None]: ...


def iter_frames(path, stream: int | None = None, rgb: bool | Collection[int] = True,
                max_pixels: int | None = None) -> Generator[tuple[np.ndarray | None, float, int], None, None]:
    """(RGB uint8 [H, W, 3] as displayed, time in seconds, rotation) per decoded frame.

    ``rgb=False`` skips the colour conversion and yields None for the picture (a cheap counting pass); a set
    of frame indices converts only those frames (the others: None).
    ``max_pixels`` refuses frames larger than that before they are decoded: the declared size is checked
    first and the decoder itself is told the limit, so a small file declaring a huge picture costs nothing.
    """
    container = open_media(path)
    try:
        vs = _video_stream(container, path, stream)
        vs.thread_type = "AUTO"
        if max_pixels:
            check_pixels(vs.codec_context.width, vs.codec_context.height, max_pixels, f"{shown(path)}: frames")
            vs.codec_context.options = {**vs.codec_context.options, "max_pixels": str(int(max_pixels))}
        last_t = None
        convert = (lambda k: rgb) if isinstance(rgb, bool) else (lambda k: k in rgb)
        try:
            for index, frame in enumerate(container.decode(vs)):
                check_pixels(frame.width, frame.height, max_pixels, f"{shown(path)}: frames")
                t = frame.time
                if t is None:  # no pts: count on from the last one at the average rate
                    rate = float(vs.average_rate or vs.guessed_rate or 30)
                    t = 0.0 if last_t is None else last_t + 1.0 / rate
                last_t = t
                yield (_display(frame) if convert(index) else None), float(t), int(getattr(frame, "rotation", 0) or 0)
        except VideoError:
            raise
        except Exception as exc:  # corrupt data after some frames: keep what decoded, if anything
            if last_t is None:
                raise VideoError(f"cannot decode {shown(path)}: {first_line(exc)}") from None
    finally:
        container.close()


def packet_times(path, stream: int | None = None) -> np.ndarray | None:
    """The presentation times of the video stream's packets, sorted: what decoding would give, read from the
    container alone (a second or less for a long video, against a full decode). None where it cannot be
    trusted (a packet without a time, flagged corrupt or to be discarded, as edit lists do): callers decode
    then. Callers still check it against the frames they decode; a decoder may drop a packet it cannot read.
    """
    container = open_media(path)
    try:
        vs = _video_stream(container, path, stream)
        pts = []
        for packet in container.demux(vs):
            if packet.size == 0:  # the demuxer's closing empty packet
                continue
            if packet.pts is None or packet.is_corrupt or packet.is_discard:
                return None
            pts.append(packet.pts)
        if not pts:
            return None
        base = vs.time_base
        return np.array(sorted(float(p * base) for p in pts), dtype=np.float64)
    except VideoError:
        raise
    except Exception:  # a damaged container: the decoding pass says what is wrong, in its own words
        return None
    finally:
        container.close()


def probe(path, stream: int | None = None) -> VideoInfo:
    container = open_media(path)
    try:
        vs = _video_stream(container, path, stream)
        rate = vs.average_rate or vs.guessed_rate
        cc = vs.codec_context
        return VideoInfo(str(path), cc.width, cc.height, float(rate) if rate else 0.0, pix_fmt=cc.pix_fmt or "",
                         codec=cc.name, has_audio=bool(container.streams.audio), stream_index=vs.index)
    finally:
        container.close()


def duration(path) -> float | None:
    """The video's length in seconds as its container or stream declares it (no decoding), None where neither
    does (a still image) or the file cannot be opened."""
    try:
        container = open_media(path)
    except VideoError:
        return None
    try:
        if container.duration:
            return container.duration / 1e6  # AV_TIME_BASE
        vs = container.streams.video[0] if container.streams.video else None
        if vs is not None and vs.duration and vs.time_base:
            return float(vs.duration * vs.time_base)
        return None
    finally:
        container.close()


def check_input(path, stream: int | None = None, max_pixels: int | None = None) -> VideoInfo:
    """What a run checks of its input before any work (an upload before it is queued): the file opens as a
    video (open_media) and its first frame decodes within the pixel budget. Raises VideoError (one line)."""
    info = probe(path, stream)
    for _ in iter_frames(path, stream, rgb=False, max_pixels=max_pixels):
        return info
    raise VideoError(f"{shown(path)} has no decodable video frames")


def read_video(path, stream: int | None = None, max_frames: int | None = None,
               max_pixels: int | None = None) -> tuple[np.ndarray, VideoInfo]:
    """All frames (RGB uint8 [T, H, W, 3], as displayed) and the video's info, times included."""
    info = probe(path, stream)
    frames: list[np.ndarray] = []
    times: list[float] = []
    rotation = 0
    for rgb, t, rot in iter_frames(path, stream, max_pixels=max_pixels):
        if frames and rgb.shape != frames[0].shape:
            raise VideoError(f"{shown(path)}: frame size changes mid-stream ({frames[0].shape[1]}x{frames[0].shape[0]} "
                             f"to {rgb.shape[1]}x{rgb.shape[0]}), which is not supported")
        frames.append(rgb)
        times.append(t)
        rotation = rot
        if max_frames and len(frames) >= max_frames:
            break
    if not frames:
        raise VideoError(f"{shown(path)} has no decodable video frames")
    info.frames = len(frames)
    info.height, info.width = frames[0].shape[:2]
    info.rotation = rotation
    info.times = np.asarray(times, dtype=np.float64)
    info.fps = info.fps or fps_from_times(info.times)
    info.duration = float(info.times[-1] - info.times[0] + 1.0 / max(info.fps, 1e-6)) if len(times) else 0.0
    return np.stack(frames), info


def fps_from_times(times: np.ndarray) -> float:
    """Average frame rate from frame times, for streams that declare none (30 if it cannot be told)."""
    if len(times) < 2:
        return 30.0
    span = times[-1] - times[0]
    return float((len(times) - 1) / span) if span > 0 else 30.0
