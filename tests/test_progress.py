"""Progress lines for long probe passes: silent when short, throttled in logs, past pytest's capture."""

import numpy as np
import torch

from probes.embeddings import output_shifts
from probes.jacobian import targeted_jacobians
from probes.representations import Readout, per_set_shifts
from suite.progress import Progress, progress_line

from .helpers import tiny_state_model


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _run(progress: Progress, clock: Clock, steps: list[tuple[float, int]], total: int) -> None:
    update = progress.task("routing Jacobians of m", "KDs")
    for at, done in steps:
        clock.now = at
        update(done, total)


def test_a_short_pass_prints_nothing():
    out, clock = [], Clock()
    _run(Progress(out.append, tty=False, clock=clock), clock, [(1.0, 50), (2.5, 90), (3.0, 100)], 100)
    assert out == []                     # projected 3 s: under the 10 s floor


def test_a_long_pass_in_a_log_writes_a_line_every_interval_and_one_at_the_end():
    out, clock = [], Clock()
    steps = [(t, int(t)) for t in np.arange(1.0, 61.0, 1.0)]       # 1 KD/s, 60 KDs
    _run(Progress(out.append, tty=False, clock=clock), clock, steps, 60)
    assert len(out) == 7                 # at 2 s, then every 10 s (12, 22, ... 52), and at the end
    assert out[0] == "\n  routing Jacobians of m: 2/60 KDs, 1 KDs/s, ~58 s left"
    assert out[-1] == "\n  routing Jacobians of m: 60/60 KDs in 60 s (1 KDs/s)\n"


def test_on_a_terminal_the_line_is_rewritten_in_place():
    out, clock = [], Clock()
    _run(Progress(out.append, tty=True, clock=clock), clock, [(3.0, 1), (4.0, 2), (8.0, 4)], 4)
    assert [o[0] for o in out] == ["\n", "\r", "\r"]
    assert out[-1].rstrip().endswith("4/4 KDs in 8 s (0.5 KDs/s)") and out[-1].endswith("\n")


def test_time_left_is_shown_in_minutes_and_hours():
    assert progress_line("x", "KDs", 100, 1000, 60.0).endswith("~9.0 min left")
    assert progress_line("x", "KDs", 2, 1000, 60.0).endswith("~8.3 h left")


def test_the_targeted_jacobian_probe_reports_each_block():
    model = tiny_state_model("GPT2")
    reprs = model.pert_encoder(torch.eye(5)).detach()
    seen = []
    targeted_jacobians(model, torch.rand(8, 12), reprs, [1], "set", torch.arange(8)[None], budget=1,
                       progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]


def test_the_output_shift_and_readout_probes_report_their_passes():
    model = tiny_state_model("GPT2")
    onehots, cells = torch.eye(5), torch.rand(8, 12)
    orders = torch.stack([torch.arange(8), torch.arange(8).flip(0)])
    seen = []
    output_shifts(model, onehots, 0, cells, chunk_size=2, orderings=orders,
                  progress=lambda done, total: seen.append((done, total)))
    assert seen == [(2, 10), (4, 10), (5, 10), (7, 10), (9, 10), (10, 10)]     # 3 chunks per ordering
    seen.clear()
    per_set_shifts(model, onehots, 0, torch.stack([cells, cells.flip(0), cells]), Readout("output"), orders,
                   progress=lambda done, total: seen.append((done, total)))
    assert seen == [(n, 6) for n in range(1, 7)]


def test_the_line_reaches_the_terminal_past_output_capture_and_not_the_junit_record(pytester):
    pytester.makepyfile(test_long="""
        from suite.plugin import terminal_progress

        def test_long(pytestconfig):
            progress = terminal_progress(pytestconfig)
            progress.delay = progress.min_total = 0
            progress.task("routing Jacobians of demo", "KDs")(3, 3)
            print("captured")
    """)
    result = pytester.runpytest_subprocess("-q", "-p", "no:randomly", "--junitxml=out.xml")
    result.assert_outcomes(passed=1)
    assert "routing Jacobians of demo: 3/3 KDs in" in result.stdout.str()
    assert "captured" not in result.stdout.str()
    assert "routing Jacobians" not in (pytester.path / "out.xml").read_text()
