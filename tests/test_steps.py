import pytest

from profiler.errors import ParseError
from profiler.steps import parse_run_output

GOOD = (
    '{"runner_version": "1", "threads": 2, "abi": "x86_64", "clock": "CLOCK_MONOTONIC"}\n'
    '{"step": 0, "warmup": true, "phases_ns": {"forward_backward": 900, "update": 100}, "step_ns": 1000, "loss": 2.5}\n'
    'WARNING: linker: something vendor-ish\n'
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


@pytest.mark.parametrize("bad", [
    "",
    "Segmentation fault\n",
    '{"step": 0, "warmup": false}\n',                      # no step_ns
    '{"step": 0, "step_ns": -5, "phases_ns": {}}\n',        # negative duration
    '{"step": "x", "step_ns": 5}\n',
])
def test_bad_output_is_a_parse_error(bad):
    with pytest.raises(ParseError):
        parse_run_output(bad)
