"""The run options have one home (runtime/options.py): the commands' flags and the service's job form are built from
its table, and the same values give the same Settings whichever way they come."""
import ast

import pytest

from conftest import ROOT
from m3ddm.errors import InputError
from runtime import Settings, batch, options, outpaint, serve
from runtime.service.form import check_form

RUN_FLAGS = [o.flag for o in options.TABLE]


def _actions(ap) -> dict:
    return {a.option_strings[-1]: a for a in ap._actions if a.option_strings}


def _outpaint_args(*argv):
    return outpaint.parser().parse_args(["in.mp4", "-o", "out.mp4", *argv])


def _batch_args(*argv):
    return batch.parser().parse_args(["in.mp4", "--out-dir", "out", *argv])


@pytest.mark.parametrize("flag", RUN_FLAGS)
def test_outpaint_and_batch_take_each_run_option_from_the_table(flag, monkeypatch, tmp_path):
    monkeypatch.setenv("M3DDM_ENGINES", str(tmp_path))  # read when the parser is built, not when imported
    option = options.OPTIONS[flag.lstrip("-").replace("-", "_")]
    ours, theirs = _actions(outpaint.parser())[flag], _actions(batch.parser())[flag]
    default = str(tmp_path) if flag == "--engines" else False if option.switch else option.default
    for action in (ours, theirs):
        assert action.option_strings == [flag] and action.dest == option.name and action.default == default
        assert action.metavar == option.metavar and list(action.choices or []) == list(option.choices or [])
        if option.count == 1:
            assert action.type is option.kind
        if flag != "--workers":
            assert action.help == option.help
    if option.count != 1:  # comma-separated values: a parser of its own in each command, reading alike
        n = option.count or 3
        assert ours.type(",".join(["1"] * n)) == theirs.type(",".join(["1"] * n)) == [option.kind(1)] * n
    if flag == "--workers":  # what a worker is differs: a level's windows for one, a video for the other
        assert ours.help.startswith("spread each level's") and theirs.help.startswith("actors, each")


def test_the_two_commands_take_no_run_option_outside_the_table():
    own = {"outpaint": {"-o", "--output", "--no-overwrite", "--work-dir", "--restart", "--keep-work-dir",
                        "--progress", "--preview", "--preview-decoder", "--json", "--quiet", "--help"},
           "batch": {"--out-dir", "--work-dir", "--report", "--quiet", "--help"}}
    for name, module in (("outpaint", outpaint), ("batch", batch)):
        flags = set(_actions(module.parser()))
        assert flags - own[name] == set(RUN_FLAGS), name


@pytest.mark.parametrize("parse", [_outpaint_args, _batch_args])
def test_ratio_and_pad_exclude_each_other_in_both_commands(parse, capsys):
    with pytest.raises(SystemExit) as stop:
        parse("--ratio", "1:1", "--pad", "0,1,0,1")
    assert stop.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_serve_shares_the_options_it_takes_and_words_its_own(monkeypatch, tmp_path):
    monkeypatch.setenv("M3DDM_ENGINES", str(tmp_path))
    served, run = _actions(serve.parser()), _actions(outpaint.parser())
    for flag in ("--engines", "--threads", "--backend", "--workers", "--gpus-per-worker", "--cpus-per-worker"):
        assert (served[flag].default, served[flag].type) == (run[flag].default, run[flag].type), flag
    assert served["--engines"].default == str(tmp_path) and served["--engines"].help == run["--engines"].help
    assert served["--threads"].help == run["--threads"].help
    assert served["--backend"].choices is None  # serve leaves an unknown backend to the engines (exit 3)
    assert served["--gpus-per-worker"].help.startswith("with --ray:")


def test_every_form_field_is_a_run_option_with_the_command_lines_default():
    assert options.FORM_FIELDS == tuple(options.FIELDS)
    assert {o.name for o in options.TABLE if o.form} == set(options.FORM_FIELDS)
    for name in options.FORM_FIELDS:
        option, field = options.OPTIONS[name], options.FIELDS[name]
        assert option.setting and field.meaning
        assert field.schema.get("default") == option.default, name
    assert options.FIELDS["seed"].schema["default"] == _outpaint_args().seed == Settings().seed


FORMS = [  # a form, and what it must mean
    ({}, {"labels": ["9:16"], "seed": 6, "guidance": (2.0, 4.0)}),
    ({"ratio": "9:16,1:1", "steps": "20", "seed": "3", "sampler": "ddim", "strides": "15,5,1", "guidance": "2.5,4"},
     {"labels": ["9:16", "1:1"], "steps": 20, "seed": 3, "sampler": "ddim", "strides": (15, 5, 1),
      "guidance": (2.5, 4.0)}),
    ({"pad": "0,10,0,10", "seed": "0", "sampler": "dpmpp"},
     {"labels": ["pad"], "ratios": (), "pad": (0, 10, 0, 10), "seed": 0}),
    ({"ratio": "4:5,4:5", "guidance": "0,50", "strides": "1"}, {"labels": ["4:5"], "guidance": (0.0, 50.0)}),
]


@pytest.mark.parametrize("form,meaning", FORMS)
def test_the_form_and_the_command_line_give_the_same_settings(form, meaning):
    argv = [a for name, value in form.items() for a in (f"--{name}", value)]
    check_form(form)
    from_form = options.settings_from_form(form)
    assert {name: getattr(from_form, name) for name in meaning} == meaning
    assert options.settings_from_args(_outpaint_args(*argv)) == from_form
    assert options.settings_from_args(_batch_args(*argv)) == from_form
    if not form:
        assert from_form == Settings()


@pytest.mark.parametrize("name,value,words", [
    ("strides", "5,2", "ending in 1"), ("guidance", "2,60", "guidance s2 must be a finite number from 0 to 50"),
    ("steps", "1", "PNDM sampler needs at least 2 steps"), ("ratio", "0:1", "ratio"),
])
def test_the_form_and_the_command_line_refuse_alike(name, value, words):
    with pytest.raises(InputError, match=words) as by_form:
        options.settings_from_form({name: value})
    with pytest.raises(InputError) as by_args:
        options.settings_from_args(_outpaint_args(f"--{name}", value))
    assert str(by_args.value) == str(by_form.value)


@pytest.mark.parametrize("argv,line", [
    (["--stream", "-1"], "--stream must be 0 or more"), (["--workers", "0"], "--workers must be positive"),
    (["--gpus-per-worker", "-0.5"], "--gpus-per-worker must be 0 or more"),
    (["--cpus-per-worker", "0"], "--cpus-per-worker must be positive"),
    (["--stream", "-1", "--threads", "0"], "--stream must be 0 or more"),  # the run's options first
    (["--threads", "0", "--workers", "0"], "threads must be an integer from 1 to"),  # then resources, then Ray
])
def test_checked_refuses_out_of_range_numbers_in_order(argv, line, tmp_path):
    with pytest.raises(InputError) as refused:
        options.checked(_batch_args(*argv), [tmp_path / "a.mp4"])
    assert str(refused.value).startswith(line)
    assert options.checked(_batch_args("--gpus-per-worker", "0"), [tmp_path / "a.mp4"])[0] == Settings()


def _modules(path) -> set[str]:
    """Every module ``path`` imports, by its full name, at any depth."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_batch_and_the_service_take_the_options_from_their_home_not_from_another_command():
    files = [ROOT / "runtime" / "batch.py", *sorted((ROOT / "runtime" / "service").glob("*.py"))]
    wrong = {f.name: "runtime.outpaint" for f in files if "runtime.outpaint" in _modules(f)}
    assert not wrong, wrong
    for name in ("batch.py", "service/form.py", "service/jobs.py", "service/contract.py"):
        assert "runtime.options" in _modules(ROOT / "runtime" / name), name
