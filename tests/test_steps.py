import json

import pytest

from autlearn.profiler.errors import ParseError
from autlearn.profiler.steps import parse_run_output

GOOD = (
    '{"runner_version": "1", "threads": 2, "abi": "x86_64", "clock": "CLOCK_MONOTONIC"}\n'
    '{"step": 0, "warmup": true, "phases_ns": {"forward_backward": 900, "update": 100}, "step_ns": 1000, "loss": 2.5}\n'
    "WARNING: linker: something vendor-ish\n"
    '{"step": 1, "warmup": false, "phases_ns": {"forward_backward": 800, "update": 90}, "step_ns": 890, "loss": 2.25,'
    ' "t_start_ns": 5000, "t_end_ns": 5890}\n'
)


def test_parses_meta_steps_and_keeps_noise():
    out = parse_run_output(GOOD)
    assert out.meta["abi"] == "x86_64"
    assert [s.step for s in out.steps] == [0, 1] and [s.warmup for s in out.steps] == [True, False]
    assert out.steps[1].phases_ns == (("forward_backward", 800), ("update", 90))
    assert out.steps[1].loss == 2.25 and out.steps[1].t_end_ns == 5890 and out.steps[0].t_start_ns is None
    assert out.noise == ("WARNING: linker: something vendor-ish",) and not out.truncated


def test_truncated_last_line_keeps_earlier_steps():
    out = parse_run_output(GOOD + '{"step": 2, "warmup": fal')
    assert out.truncated and len(out.steps) == 2


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "Segmentation fault\n",
        '{"step": 0, "warmup": false}\n',  # no step_ns
        '{"step": 0, "step_ns": -5, "phases_ns": {}}\n',  # negative duration
        '{"step": "x", "step_ns": 5}\n',
    ],
)
def test_bad_output_is_a_parse_error(bad):
    with pytest.raises(ParseError):
        parse_run_output(bad)


# ------------------------------------------------------------------------------------------- strict (runner tests)

META = '{"runner_version": "1", "abi": "x86_64", "threads": 1, "warmup": 1, "steps": 1}'
STEP = '{{"step": {i}, "warmup": {w}, "phases_ns": {{"fb": 5}}, "step_ns": 9, "loss": 0.5}}'


def test_strict_accepts_runner_output():
    out = parse_run_output("\n".join([META, STEP.format(i=0, w="true"), STEP.format(i=1, w="false")]), strict=True)
    assert out.meta["abi"] == "x86_64" and len(out.steps) == 2 and len(out.timed) == 1


@pytest.mark.parametrize(
    "text, words",
    [
        ("", "printed nothing"),
        (STEP.format(i=0, w="true"), "metadata line"),
        (META + "\n" + STEP.format(i=0, w="true"), "expected 2"),
        (META + "\n" + STEP.format(i=1, w="true") + "\n" + STEP.format(i=2, w="false"), "malformed step line 0"),
        (META + "\n{oops", "not JSON"),
        (META + '\n{"step": 0, "warmup": true, "phases_ns": {"a": -1}, "step_ns": 1, "loss": 1}', "malformed"),
    ],
)
def test_strict_rejects_anything_else(text, words):
    with pytest.raises(ParseError, match=words):
        parse_run_output(text, strict=True)


_META2 = (
    '{"runner_version": "2", "abi": "x86_64", "threads": 1, "warmup": 1, "steps": 1, '
    '"clock_pair": {"mono_ns": 100, "real_ns": 1700000000000000000, "gap_ns": 40}}'
)


def _step(i: int, t0: int, t1: int, step_ns: int | None = None) -> str:
    return json.dumps(
        {
            "step": i,
            "warmup": i == 0,
            "phases_ns": {"fwd": 1},
            "step_ns": t1 - t0 if step_ns is None else step_ns,
            "t_start_ns": t0,
            "t_end_ns": t1,
            "loss": 1.0,
        }
    )


_END = '{"end": true, "clock_pair": {"mono_ns": 900, "real_ns": 1700000000000000800, "gap_ns": 30}}'


@pytest.mark.parametrize("strict", [True, False])
def test_parser_accepts_version_2_clocks(strict):
    out = parse_run_output("\n".join([_META2, _step(0, 200, 300), _step(1, 300, 450), _END]), strict=strict)
    assert [s.t_end_ns for s in out.steps] == [300, 450]
    assert out.meta["clock_pair"]["mono_ns"] == 100 and out.end["clock_pair"]["real_ns"] == 1700000000000000800
    assert out.meta["end_clock_pair"] == out.end["clock_pair"] and len(out.timed) == 1
    v1 = parse_run_output(
        '{"runner_version": "1", "warmup": 0, "steps": 1}\n'
        '{"step": 0, "warmup": false, "phases_ns": {}, "step_ns": 5, "loss": null}',
        strict=strict,
    )
    assert v1.end is None and v1.steps[0].step_ns == 5


@pytest.mark.parametrize(
    "lines, words, lenient_too",
    [
        (
            [_META2, _step(0, 200, 300, step_ns=99), _step(1, 300, 450), _END],
            r"step line 0 \(bad t_start_ns/t_end_ns\)",
            True,
        ),
        ([_META2, _step(0, 200, 300), _step(1, 299, 450), _END], "bad t_start_ns/t_end_ns in step line 1", True),
        ([_META2, _step(0, 200, 300), _step(1, 300, 450), '{"end": true}'], "malformed end line", True),
        (
            [
                _META2.replace('"real_ns": 1700000000000000000', '"real_ns": "x"'),
                _step(0, 200, 300),
                _step(1, 300, 450),
            ],
            "malformed clock_pair",
            True,
        ),
        ([_META2, _step(0, 200, 300), _END], "printed 1 step lines, expected 2", False),
        ([_META2, _step(0, 200, 300), "ld.so: vendor noise", _step(1, 300, 450)], "not JSON", False),
        ([_META2, _step(0, 200, 300), '{"vendor": 1}', _step(1, 300, 450)], "unexpected runner line", False),
    ],
)
def test_parser_rejects_bad_clocks(lines, words, lenient_too):
    with pytest.raises(ParseError, match=words):
        parse_run_output("\n".join(lines), strict=True)
    if lenient_too:  # a campaign must not record a step whose timing contradicts itself
        with pytest.raises(ParseError, match=words):
            parse_run_output("\n".join(lines))
    else:
        assert len(parse_run_output("\n".join(lines)).steps) == sum('"step"' in line for line in lines)
