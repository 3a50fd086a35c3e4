"""The options of a run, in one table: each command line that runs videos (runtime.outpaint, runtime.batch) builds
its flags from it, runtime.serve takes the ones it shares, and the service's job form (runtime/service/form.py,
declared by runtime/service/contract.py) takes the entries that have a form field. A ``Settings`` comes from
either source through the same mapping (``settings_from_args``, ``settings_from_form``), so a value means the
same run whichever way it was given.

The form's grammar is the command line's, bounded: at most 8 ratios, 8 strides and 7-digit padding; steps from 2
(PNDM, the default, needs two); every number written plainly (no exponents, signs or spaces). A value the
document allows is accepted and one it forbids is refused (422), before Settings.check has the last word.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, NamedTuple

from m3ddm.errors import InputError
from runtime import cli, env
from runtime.engines.select import BACKENDS
from runtime.samplers import MAX_STEPS, SAMPLERS
from runtime.settings import MAX_PIXELS, MAX_SEED, Settings
from runtime.video.sink import ENCODER_THREADS

TARGET, RUN, CLUSTER = "target", "run", "cluster"  # --ratio or --pad; the rest of a run; its Ray workers

_POSITIVE = r"(?:[1-9][0-9]{0,5}(?:\.[0-9]{1,6})?|0\.[0-9]{0,5}[1-9][0-9]{0,5})"
_RATIO = f"{_POSITIVE}:{_POSITIVE}"
_SCALE = r"(?:50(?:\.0{1,6})?|[1-4]?[0-9](?:\.[0-9]{1,6})?)"  # 0 to 50: MAX_GUIDANCE


class Field(NamedTuple):
    """A field of the service's job form."""
    schema: dict  # as the OpenAPI document declares it (a pattern is anchored: it matches the whole value)
    meaning: str
    example: str = ""


@dataclass(frozen=True)
class Option:
    """One run option: its flag, how its value reads, the Settings field it sets and, where the service takes
    it, the form field."""
    flag: str  # the long flag; the argparse dest and the form field are its name
    help: str | None = None
    kind: type | None = None  # each value's type (None: the text as given)
    count: int | None = 1  # comma-separated values: 1 a single value, n exactly n, None one or more
    default: object = None  # a callable is called when a parser is built (the environment of that moment)
    choices: tuple | None = None
    metavar: str | None = None
    switch: bool = False  # a flag that takes no value
    group: str = RUN
    setting: str | None = None  # the Settings field it sets
    bound: str | None = None  # "positive" or "0 or more", for numbers whose range argparse cannot say
    form: Field | None = None

    @property
    def name(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    def add_to(self, ap, **overrides) -> None:
        """The option on ``ap`` (a parser or a group); ``overrides`` (None: left out) word it for one command."""
        default = self.default() if callable(self.default) else self.default
        spec: dict[str, Any]
        if self.switch:
            spec = dict(action="store_true", help=self.help)
        else:
            spec = dict(type=self.kind if self.count == 1 else cli.csv(self.kind, self.count),
                        default=default, choices=self.choices, metavar=self.metavar, help=self.help)
        spec |= overrides
        ap.add_argument(self.flag, **{k: v for k, v in spec.items() if v is not None})


TABLE = (
    Option("--ratio", "target ratio W:H, or several: 9:16,1:1 (one output each, named OUTPUT_9x16.mp4, ...); "
           "default 9:16", default="9:16", group=TARGET, setting="ratios",
           form=Field({"type": "string", "pattern": f"^{_RATIO}(?:,{_RATIO}){{0,7}}$"},
                      "target ratios W:H, one output each (a ratio given twice is one output)", "9:16 or 9:16,1:1")),
    Option("--pad", "explicit padding in source pixels instead of a ratio", int, count=4, metavar="T,R,B,L",
           group=TARGET, setting="pad",
           form=Field({"type": "string", "pattern": r"^[0-9]{1,7}(?:,[0-9]{1,7}){3}$"},
                      "top,right,bottom,left padding in source pixels, one output 'pad', instead of the ratios",
                      "0,64,0,64")),
    Option("--engines", f"engines folder (default: ${env.ENGINES} or ./engines)", default=env.engines_dir),
    Option("--backend", default="auto", choices=BACKENDS),
    Option("--sampler", "pndm (default) reproduces the official run", default="pndm", choices=tuple(sorted(SAMPLERS)),
           setting="sampler", form=Field({"type": "string", "enum": list(SAMPLERS)},
                                         "pndm reproduces the official trajectory")),
    Option("--steps", "sampling steps (default: 50; 20 for dpmpp)", int, setting="steps",
           form=Field({"type": "integer", "minimum": 2, "maximum": MAX_STEPS},
                      "sampling steps (default: the sampler's, 50; 20 for dpmpp)")),
    Option("--seed", kind=int, default=6, setting="seed",
           form=Field({"type": "integer", "minimum": 0, "maximum": MAX_SEED}, "the seed of all randomness")),
    Option("--strides", "coarse-to-fine strides, e.g. 15,5,1 (official) or 30,15,1 (paper); default: 15,5,1, or 1 "
           "under 50 frames", int, count=None, setting="strides",
           form=Field({"type": "string", "pattern": r"^(?:[1-9][0-9]{0,3},){0,7}1$"},
                      "coarse-to-fine strides ending in 1 (default 15,5,1; 1 under 50 frames)", "15,5,1")),
    Option("--guidance", "local and global guidance (default 2,4)", float, count=2, metavar="S1,S2", setting="guidance",
           form=Field({"type": "string", "pattern": f"^{_SCALE},{_SCALE}$"},
                      "the two guidance scales s1 (local), s2 (global), 0 to 50 (default 2,4)", "2,4")),
    Option("--batch-windows", "independent windows per engine call (default 4)", int, default=4,
           setting="batch_windows"),
    Option("--window-noise", "one start noise for every window (official) or one per window", default="shared",
           choices=("shared", "independent"), setting="window_noise"),
    Option("--feather", "seam blend width in source pixels (default 1%% of the shorter side)", float,
           setting="feather"),
    Option("--height", "scale the output to this height (default: the source's own scale)", int,
           setting="output_height"),
    Option("--stream", "video stream index (default: the first)", int, bound="0 or more"),
    Option("--max-pixels", f"refuse frames, read or written, larger than this many pixels (default {MAX_PIXELS}: 8K)",
           int, default=MAX_PIXELS, setting="max_pixels"),
    Option("--threads", "CPU threads for ONNX Runtime", int),
    Option("--gpu-memory", "TensorRT and torch: the most GPU memory this run may take (weights included); "
           "TensorRT chooses the window batch to fit", float, metavar="GB"),
    Option("--codec", default="libx264"),
    Option("--crf", kind=int, default=18),
    Option("--pix-fmt", default="yuv420p"),
    Option("--encoder-threads", f"the video encoder's threads (default {ENCODER_THREADS}); the same count gives the "
           "same bytes on any machine", int, default=ENCODER_THREADS),
    Option("--no-audio", "drop the audio track", switch=True),
    # --workers means something else to each command (a level's windows, videos, jobs): each words its help
    Option("--workers", kind=int, group=CLUSTER, bound="positive"),
    Option("--address", "the Ray cluster: auto, HOST:PORT or ray://HOST:PORT (default: a local Ray)", group=CLUSTER),
    Option("--gpus-per-worker", "GPUs per worker (default: 1 where the cluster has GPUs)", float, group=CLUSTER,
           bound="0 or more"),
    Option("--cpus-per-worker", "CPUs per worker (default: --threads, or 1)", float, group=CLUSTER, bound="positive"),
)
OPTIONS = {o.name: o for o in TABLE}
# The form's fields in the order the OpenAPI document lists them (not the command line's).
FORM_FIELDS = ("ratio", "pad", "steps", "seed", "sampler", "strides", "guidance")


def _field(option: Option) -> Field:
    """The option's form field; a default the command line has is the form's too, and the document says so."""
    assert option.form is not None, option.flag
    if option.default is None:
        return option.form
    return option.form._replace(schema={**option.form.schema, "default": option.default})


FIELDS = {name: _field(OPTIONS[name]) for name in FORM_FIELDS}
_BOUNDS = {"positive": lambda v: v > 0, "0 or more": lambda v: v >= 0}


def add(ap, name: str, **overrides) -> None:
    """One option of the table on ``ap``, for a command that takes only some of them (runtime.serve)."""
    OPTIONS[name].add_to(ap, **overrides)


def add_run_options(ap) -> None:
    """The options of a run, the same in every command that runs videos."""
    target = ap.add_mutually_exclusive_group()
    for option in TABLE:
        if option.group in (TARGET, RUN):
            option.add_to(target if option.group == TARGET else ap)


def add_cluster_options(group, workers: str) -> None:
    """The Ray options on ``group``; ``workers``: what --workers spreads, in this command's words."""
    for option in TABLE:
        if option.group == CLUSTER:
            option.add_to(group, help=workers if option.name == "workers" else option.help)


def _check_bounds(args, group: str) -> None:
    for option in TABLE:
        value = getattr(args, option.name, None)
        if option.group == group and option.bound and value is not None and not _BOUNDS[option.bound](value):
            raise InputError(f"{option.flag} must be {option.bound}")


def _settings(values: dict) -> Settings:
    """The run the options describe; an option not given (None) keeps Settings' default, and padding replaces
    the ratios."""
    changes = {o.setting: values.get(o.name) for o in TABLE if o.setting}
    if changes["pad"] is not None:
        changes["ratios"] = ()
    s = Settings.build(**changes)
    s.check()
    return s


def settings_from_args(args) -> Settings:
    """The checked Settings of parsed command-line options."""
    return _settings(vars(args))


def settings_from_form(form: dict) -> Settings:
    """A job's Settings from its text fields (FORM_FIELDS, parsed as the command line parses them), checked."""
    def value(name):
        option, text = OPTIONS[name], form.get(name)
        if text in (None, "") or option.kind is None:
            return text or None
        try:  # a single number too goes through cli.csv: its refusals are the form's error lines
            values = cli.csv(option.kind, option.count)(text)
        except argparse.ArgumentTypeError as exc:
            raise InputError(f"{name}: {exc}") from None
        return values[0] if option.count == 1 else tuple(values)

    return _settings({name: value(name) for name in FORM_FIELDS})


def checked(args, outputs) -> tuple:
    """(Settings, EncodeOptions) of the options, every one checked and the encoder tried on each of
    ``outputs`` (paths, before their _WxH suffixes), before any engine loads. Raises InputError."""
    from runtime.api import check_resources  # the pipeline comes with it: not for the service's form
    from runtime.streaming import output_paths
    from runtime.video import EncodeOptions
    _check_bounds(args, RUN)
    check_resources(args.threads, args.gpu_memory)
    _check_bounds(args, CLUSTER)
    run_settings = settings_from_args(args)
    encode = EncodeOptions(codec=args.codec, crf=args.crf, pix_fmt=args.pix_fmt, audio=not args.no_audio,
                           threads=args.encoder_threads)
    for output in outputs:
        for path in output_paths(output, run_settings.labels).values():
            encode.check(path)
    return run_settings, encode
