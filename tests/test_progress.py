"""Job progress in photos: the ETA line, and the reporter reading a live counter actor."""

from __future__ import annotations

import io
import time

from pipelines.progress import Counter, ProgressReporter, eta_line


def test_eta_line_counts_photos_rate_and_time_left():
    line = eta_line(250, 1000, 3, 50.0)
    assert "250/1000 photos (25%)" in line and "3 failed" in line and "5.00 photos/s" in line
    assert "ETA 00:02:30" in line
    assert "ETA ?" in eta_line(0, 10, 0, 5.0)


def test_reporter_logs_lines_off_a_terminal(ray_session):
    counter = ray_session.remote(num_cpus=0)(Counter).remote()
    out = io.StringIO()
    with ProgressReporter(counter, total=8, stream=out, interval_s=0.5):
        counter.add.remote(4, 1)
        time.sleep(2.5)
    assert "4/8 photos (50%), 1 failed" in out.getvalue()
